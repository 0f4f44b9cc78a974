/* Loads a plugin the way NCCL does (dlopen RTLD_NOW|RTLD_LOCAL, then dlsym)
 * and prints the `name` field of each exported plugin struct named on the
 * command line. Exit 1 if the library does not load or a symbol is missing.
 * Used by scripts/check-portable inside an old glibc userland; built with
 * `zig cc -target x86_64-linux-gnu.2.28` so the probe itself runs there. */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s LIB SYMBOL...\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        /* Every ncclNet/CollNet/Tuner plugin struct starts with `const char* name`. */
        const char *const *plugin = dlsym(lib, argv[i]);
        if (!plugin) {
            fprintf(stderr, "dlsym %s failed: %s\n", argv[i], dlerror());
            return 1;
        }
        printf("%s: name=%s\n", argv[i], *plugin ? *plugin : "(null)");
    }
    dlclose(lib);
    return 0;
}
