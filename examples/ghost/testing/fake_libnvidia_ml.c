// Stand-in libnvidia-ml.so.1 for scripts/check-ghost-probe: fixed readings, NVML signatures.
#include <string.h>
typedef void* H;
static unsigned long long energy = 1000000;
int nvmlInit_v2(void) { return 0; }
int nvmlDeviceGetHandleByUUID(const char *u, H *h) { if (strncmp(u, "GPU-", 4)) return 2; *h = (H)0x1; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, H *h) { *h = (H)0x1; return 0; }
int nvmlDeviceGetClockInfo(H h, int t, unsigned *c) { if (h != (H)0x1) return 2; *c = t == 1 ? 1980 : 3201; return 0; }
int nvmlDeviceGetMaxClockInfo(H h, int t, unsigned *c) { *c = t == 1 ? 1980 : 3201; return 0; }
int nvmlDeviceGetPowerUsage(H h, unsigned *mw) { *mw = 123456; return 0; }
int nvmlDeviceGetPerformanceState(H h, int *p) { *p = 0; return 0; }
int nvmlDeviceGetTemperature(H h, int s, unsigned *t) { *t = 41; return 0; }
int nvmlDeviceGetCurrentClocksEventReasons(H h, unsigned long long *r) { *r = 0x1 | 0x4; return 0; }
int nvmlDeviceGetTotalEnergyConsumption(H h, unsigned long long *e) { energy += 150000; *e = energy; return 0; }
int nvmlDeviceGetSupportedMemoryClocks(H h, unsigned *n, unsigned *a) { if (*n < 2) return 7; a[0] = 3201; a[1] = 1593; *n = 2; return 0; }
