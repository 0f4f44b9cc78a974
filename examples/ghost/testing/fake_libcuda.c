// Stand-in libcuda.so.1 for scripts/check-ghost-probe: just the primary-context flag calls.
static unsigned int g_flags = 0; static int g_active = 0;
int cuInit(unsigned int f) { return 0; }
int cuDeviceGet(int *d, int o) { *d = o; return 0; }
int cuDevicePrimaryCtxSetFlags_v2(int d, unsigned int f) { if (g_active) return 708; g_flags = f; return 0; }
int cuDevicePrimaryCtxGetState(int d, unsigned int *f, int *a) { *f = g_flags; *a = g_active; return 0; }
static int g_ctx = 0;
int cuCtxGetCurrent(void **c) { *c = g_ctx ? (void *)&g_ctx : 0; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)&g_ctx; return 0; }
int cuCtxSetCurrent(void *c) { g_ctx = 1; return 0; }
