/* tests/bench/bench_ssd.c - one Mamba-2 layer's SSM part: chunked SSD prefill vs the decode
 * step run token by token, on the same prompt and state, one thread.
 *
 *   build-test/tests/bench/bench_ssd [T] [H P G N]     (default 512, mamba2-130m: 24 64 1 128)
 * Prints the time per call of each, for chunk lengths 16..256, and their ratios, measured in
 * interleaved rounds (best of each) so that machine noise hits both alike. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/blas.h"
#include "engine/ssd.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

int main(int argc, char **argv)
{
    ym_blas_reexec(argv);
    ym_blas_single_thread();
    int T = argc > 1 ? atoi(argv[1]) : 512;
    ym_ssd_dims d = { 24, 64, 1, 128 };
    if (argc > 5)
        d = (ym_ssd_dims){ atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]) };
    int H = d.n_head, Di = H * d.head_dim, GN = d.n_group * d.d_state, ld = Di + 2 * GN;
    size_t ns = (size_t)Di * d.d_state;
    unsigned seed = 1;
    float *xbc = malloc(sizeof(float) * (size_t)T * ld), *dt = malloc(sizeof(float) * T * H);
    float *y = malloc(sizeof(float) * (size_t)T * Di), *s = malloc(sizeof(float) * ns);
    float A[4096], D[4096];
    for (size_t i = 0; i < (size_t)T * ld; i++)
        xbc[i] = frand(&seed);
    for (int i = 0; i < T * H; i++)
        dt[i] = 0.01f + 0.05f * (frand(&seed) + 1.0f);
    for (int h = 0; h < H; h++)
        A[h] = -1.0f - (float)h, D[h] = 1.0f;
    static const int Qs[] = { 16, 32, 64, 128, 256 };
    enum { NQ = sizeof(Qs) / sizeof(Qs[0]) };
    double best_step = 1e30, best[NQ];
    float *work = malloc(sizeof(float) * ym_ssd_prefill_work(&d, 256));
    for (int q = 0; q < NQ; q++)
        best[q] = 1e30;
    for (int round = 0; round < 7; round++) {
        memset(s, 0, sizeof(float) * ns);
        double t0 = now();
        for (int t = 0; t < T; t++)
            ym_ssd_step_f32(y + (size_t)t * Di, s, xbc + (size_t)t * ld, dt + (size_t)t * H, A, D,
                            xbc + (size_t)t * ld + Di, xbc + (size_t)t * ld + Di + GN, &d, 0, H);
        double e = now() - t0;
        best_step = e < best_step ? e : best_step;
        for (int q = 0; q < NQ; q++) {
            memset(s, 0, sizeof(float) * ns);
            t0 = now();
            ym_ssd_prefill_f32(y, Di, s, xbc, ld, dt, H, xbc + Di, xbc + Di + GN, ld, A, D, T, &d,
                               Qs[q], 0, H, work);
            e = now() - t0;
            best[q] = e < best[q] ? e : best[q];
        }
    }
    printf("{\"T\":%d,\"H\":%d,\"P\":%d,\"G\":%d,\"N\":%d,\"blas_core\":\"%s\",\"step_ms\":%.3f",
           T, H, d.head_dim, d.n_group, d.d_state, ym_blas_core(), 1e3 * best_step);
    for (int q = 0; q < NQ; q++)
        printf(",\"chunk%d_ms\":%.3f,\"chunk%d_speedup\":%.2f", Qs[q], 1e3 * best[q], Qs[q],
               best_step / best[q]);
    printf("}\n");
    free(xbc), free(dt), free(y), free(s), free(work);
    return 0;
}
