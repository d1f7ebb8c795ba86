/* engine/blas.c - make OpenBLAS run the kernel this CPU deserves (docs/ENGINE.md).
 *
 * Called first thing in main(), before any thread exists. OpenBLAS reads OPENBLAS_CORETYPE
 * when it is loaded, so the only way to change its choice from inside the program is to set
 * the variable and execute ourselves again. We do that only when the user has not set it and
 * the library picked a kernel weaker than the CPU supports. */
#include "engine/blas.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>

static unsigned long long xgetbv0(void)
{
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

/* The best OpenBLAS core name for this CPU, judged by its features (not its model number,
 * which is what the library's own detection looks at and fails on). */
static const char *wanted_core(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return NULL;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx)
        return NULL;
    unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6)
        return NULL;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return NULL;
    int avx2 = (b >> 5) & 1;
    int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 28) & 1) && ((b >> 30) & 1) &&
                 ((b >> 31) & 1); /* F, DQ, CD, BW, VL */
    int os512 = (xcr0 & 0xe6) == 0xe6;
    if (avx512 && os512) {
        unsigned a1 = 0, b1, c1, d1;
        __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
        return ((a1 >> 5) & 1) ? "Cooperlake" : "SkylakeX";
    }
    if (avx2 && fma)
        return "Haswell";
    return NULL;
}
#else
static const char *wanted_core(void)
{
    return NULL;
}
#endif

const char *ym_blas_core(void)
{
    const char *name = openblas_get_corename();
    return name != NULL ? name : "unknown";
}

void ym_blas_reexec(char **argv)
{
    const char *no = getenv("YUNMIN_NO_REEXEC");
    if (getenv("OPENBLAS_CORETYPE") != NULL || (no != NULL && *no != '\0' && *no != '0'))
        return;
    /* YUNMIN_FORCE_REEXEC=1 re-executes even when the kernel is already right (keeping the
     * library's choice), so tests can exercise this path on any CPU. */
    const char *force = getenv("YUNMIN_FORCE_REEXEC");
    int forced = force != NULL && *force != '\0' && *force != '0';
    const char *want = wanted_core();
    const char *have = openblas_get_corename();
    if (forced && want == NULL)
        want = have;
    if (want == NULL)
        return;
    if (!forced && have != NULL && strcasecmp(have, want) == 0)
        return;
    /* Prefer our own binary over argv[0], which may be a name found through PATH. Exec it by
     * its real path, not as /proc/self/exe: the kernel names a process after the file it
     * executes, and ps or `pgrep yunmind` would see "exe". */
    if (setenv("OPENBLAS_CORETYPE", want, 0) != 0)
        return;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        execv(self, argv);
    }
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): run on with what we have; the kernel is logged at start-up. */
    unsetenv("OPENBLAS_CORETYPE");
}

void ym_blas_single_thread(void)
{
    openblas_set_num_threads(1);
}
