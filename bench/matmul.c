/* bench/matmul.c - ym_matmul alone, one thread, every weight type, against OpenBLAS (sgemv for
 * one row, sgemm otherwise) on the same f32 matrix: bench/matmul N K M [REPS].
 *
 * Times are the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so other processes on a shared
 * machine slow the figures less than wall time would. Prints per type the weight bytes read
 * per second and GFLOP/s (2 M N K per call), each call once per round, REPS rounds (default 5),
 * the types interleaved. A matrix that fits in the caches measures the kernel, a large one
 * (N K 4 bytes well past the L3) the memory stream. int8 is run both ways: f32 activations
 * (weights widened) and int8 activations (VNNI, where the CPU has it); bf16 too: f32
 * activations and, as "bf16xbf16", bf16 activations (AVX512-BF16, where the CPU has it;
 * opt-in in the engine). With
 * YM_MATMUL_PORTABLE=1 in the environment the portable kernels run (ym_matmul_force_portable). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "engine/weight.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *huge(size_t bytes)
{
    size_t h = (size_t)2 << 20, n = (bytes + h - 1) / h * h;
    void *p = aligned_alloc(h, n);
    if (p != NULL)
        madvise(p, n, MADV_HUGEPAGE);
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: matmul N K M [REPS]\n");
        return 2;
    }
    int N = atoi(argv[1]), K = atoi(argv[2]), M = atoi(argv[3]), reps = argc > 4 ? atoi(argv[4]) : 5;
    if (N < 1 || K < 1 || M < 1 || reps < 1)
        return 2;
    openblas_set_num_threads(1);
    const char *pe = getenv("YM_MATMUL_PORTABLE");
    if (pe != NULL && strcmp(pe, "1") == 0)
        ym_matmul_force_portable(1);
    size_t n = (size_t)N * K;
    float *W = huge(n * 4), *sc = malloc(sizeof(float) * (size_t)N);
    void *b16 = huge(n * 2), *i8 = huge(n);
    float *A = malloc(sizeof(float) * (size_t)M * K), *C = malloc(sizeof(float) * (size_t)M * N);
    float *scr = malloc(sizeof(float) * ym_matmul_scratch(K));
    if (!W || !sc || !b16 || !i8 || !A || !C || !scr)
        return 1;
    for (size_t i = 0; i < n; i++)
        W[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = 1.0f / (float)(i % 97 + 1);
    ym_weight_convert(YM_WT_BF16, W, (size_t)K, N, K, b16, NULL, NULL);
    ym_weight_convert(YM_WT_INT8, W, (size_t)K, N, K, i8, sc, NULL);
    ym_weight w[3] = {{YM_WT_F32, N, K, W, NULL}, {YM_WT_BF16, N, K, b16, NULL},
                      {YM_WT_INT8, N, K, i8, sc}};
    double flop = 2.0 * M * (double)n;
    printf("N %d K %d M %d, one thread, matmul %s\n", N, K, M, ym_matmul_isa());
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (M == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, W, K, A, 1, 0.0f, C, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, W, K, 0.0f,
                        C, N);
        double t = now() - t0;
        printf("openblas f32 %6.2f GB/s %6.1f GF |", (double)n * 4 / t / 1e9, flop / t / 1e9);
        for (int i = 0; i < 5; i++) {
            const ym_weight *x = &w[i < 3 ? i : i == 3 ? 2 : 1];
            ym_matmul_int8_activations(i == 3);
            ym_matmul_bf16_activations(i == 4);
            t0 = now();
            ym_matmul(C, N, A, K, M, x, 0, N, 0.0f, scr);
            t = now() - t0;
            printf(" %s %6.2f GB/s %6.1f GF |", i == 4 ? "bf16xbf16" : i == 3 ? "int8xint8" :
                   i == 2 ? "int8" : ym_wtype_name(x->type), (double)ym_weight_bytes(x) / t / 1e9,
                   flop / t / 1e9);
        }
        ym_matmul_int8_activations(1);
        ym_matmul_bf16_activations(0);
        printf("\n");
    }
    return 0;
}
