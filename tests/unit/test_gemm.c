/* tests/unit/test_gemm.c - the matrix product over f32/bf16/int8 weights (engine/weight.c)
 * against a plain double-precision loop written here from the format's definition (bf16 =
 * f32 rounded to nearest even in its top 16 bits; int8 = round(w / s), s = max|row| / 127):
 * odd shapes (K not a multiple of 16, N not a multiple of the row block), 1 to 40 rows (the
 * small-M kernels and the sgemm tiles), beta 0 and 1, column ranges that start anywhere, and
 * the AVX-512 and portable kernels alike; int8 x int8 (VNNI) against inputs quantized as
 * weight.h says, bf16 x bf16 (AVX512-BF16) against inputs rounded to bf16, where the CPU has
 * them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/weight.h"
#include "testutil.h"

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static int vnni_here(void);
static int bf16_here(void);

/* bf16 rounding of v, written from the definition (round to nearest, ties to even). */
static float bf16_round(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&v, &u, 4);
    return v;
}

/* W [N, K] as the type t stores it, in f32 (the values the product must use). */
static void quantized_values(ym_wtype t, const float *W, int N, int K, float *Q)
{
    for (int n = 0; n < N; n++) {
        double amax = 0;
        for (int k = 0; k < K; k++)
            amax = fmax(amax, fabs(W[(size_t)n * K + k]));
        float s = (float)(amax / 127.0);
        for (int k = 0; k < K; k++) {
            float w = W[(size_t)n * K + k];
            size_t i = (size_t)n * K + k;
            if (t == YM_WT_BF16)
                Q[i] = bf16_round(w);
            else if (t == YM_WT_INT8)
                Q[i] = s > 0 ? (float)nearbyint(w / s) * s : 0.0f;
            else
                Q[i] = w;
        }
    }
}

/* koff < 0: ym_matmul over W [N, K]; koff >= 0: ym_matmul_cols over the columns [koff,
 * koff + K) of a wider W [N, Kf] (Kf = koff + K + 3), the int8 scales those of the whole rows. */
/* An input row's int8 quantization factors as engine/weight.h defines them: q = round(a * inv),
 * value q * sa, with inv = 127 / max|a| and sa = max|a| / 127 (both 0 for a zero row). */
static void act_scales(const float *a, int K, float *inv, float *sa)
{
    float amax = 0;
    for (int k = 0; k < K; k++)
        amax = fmaxf(amax, fabsf(a[k]));
    *inv = amax > 0 ? 127.0f / amax : 0.0f;
    *sa = amax / 127.0f;
}

static void check_case_cols(ym_wtype t, int N, int K, int M, int n0, int n1, float beta,
                            unsigned seed, int koff)
{
    int lda = K + 5, ldc = (n1 - n0) + 7;
    const int Kw = K; /* the product's inputs */
    const int k0 = koff < 0 ? 0 : koff;
    K = koff < 0 ? Kw : koff + Kw + 3; /* the stored matrix's columns */
    float *W = malloc(sizeof(float) * (size_t)N * K), *Q = malloc(sizeof(float) * (size_t)N * K);
    void *data = malloc(4 * (size_t)N * K);
    float *scale = malloc(sizeof(float) * (size_t)N);
    float *A = malloc(sizeof(float) * (size_t)M * lda);
    float *C0 = malloc(sizeof(float) * (size_t)M * ldc);
    float *C = malloc(sizeof(float) * (size_t)M * ldc);
    float *scr = malloc(sizeof(float) * ym_matmul_scratch(K));
    /* the reference loops below run over the product's inputs: A[m, k] meets Q[n, k0 + k] */
#define QW(n, k) Q[(size_t)(n) * K + k0 + (k)]
    double *R = malloc(sizeof(double) * (size_t)M * ldc);
    ck_assert(W && Q && data && scale && A && C0 && C && scr && R);
    for (size_t i = 0; i < (size_t)N * K; i++)
        W[i] = frand(&seed) * (i % 7 == 3 ? 4.0f : 1.0f);
    for (size_t i = 0; i < (size_t)M * lda; i++)
        A[i] = frand(&seed);
    for (size_t i = 0; i < (size_t)M * ldc; i++)
        C0[i] = frand(&seed);
    ck_assert_int_eq(ym_weight_convert(t, W, (size_t)K, N, K, data, scale, NULL), YM_OK);
    ym_weight w = {t, N, K, data, t == YM_WT_INT8 ? scale : NULL};
    quantized_values(t, W, N, K, Q);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            ck_assert_msg(fabsf(ym_weight_at(&w, n, k) - Q[(size_t)n * K + k]) <=
                              1e-6f * fabsf(Q[(size_t)n * K + k]),
                          "%s W[%d,%d] = %g, want %g", ym_wtype_name(t), n, k,
                          (double)ym_weight_at(&w, n, k), (double)Q[(size_t)n * K + k]);
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) {
            double acc = beta != 0.0f ? C0[(size_t)m * ldc + (n - n0)] : 0.0;
            for (int k = 0; k < Kw; k++)
                acc += (double)A[(size_t)m * lda + k] * QW(n, k);
            R[(size_t)m * ldc + (n - n0)] = acc;
        }
    /* int8 activations: each input row quantized as engine/weight.h defines it, in f32:
     * q = round-to-nearest-even(a * (127 / max|a|)), value q * (max|a| / 127) */
    double *R8 = malloc(sizeof(double) * (size_t)M * ldc);
    ck_assert(R8);
    for (int m = 0; m < M; m++) {
        const float *a = A + (size_t)m * lda;
        float inv, sa;
        act_scales(a, Kw, &inv, &sa);
        for (int n = n0; n < n1; n++) {
            double acc = 0;
            for (int k = 0; k < Kw; k++) {
                double qa = (double)nearbyintf(a[k] * inv) * sa;
                acc += qa * QW(n, k);
            }
            R8[(size_t)m * ldc + (n - n0)] =
                acc + (beta != 0.0f ? C0[(size_t)m * ldc + (n - n0)] : 0.0);
        }
    }
    /* int8 x int8 to the bit: the same quantization with the stored int8 weights, the integer
     * dot product exact, then the scaling in f32: ((float)sum_k qa qw * sa) * scale[n], and
     * with beta C0 + that last product in one rounding (an FMA). Every summation order of the
     * kernels gives the same int32, so the f32 results must be these bits */
    float *E8 = malloc(sizeof(float) * (size_t)M * ldc);
    ck_assert(E8);
    for (int m = 0; m < M; m++) {
        const float *a = A + (size_t)m * lda;
        float inv, sa;
        act_scales(a, Kw, &inv, &sa);
        for (int n = n0; n < n1; n++) {
            const int8_t *q = (const int8_t *)data + (size_t)n * K + k0;
            long long d = 0;
            for (int k = 0; k < Kw; k++) {
                float v = nearbyintf(a[k] * inv);
                d += (long long)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v) * q[k];
            }
            float e = (float)d * sa;
            E8[(size_t)m * ldc + (n - n0)] =
                beta != 0.0f ? fmaf(e, scale[n], C0[(size_t)m * ldc + (n - n0)]) : e * scale[n];
        }
    }
    /* bf16 activations: each input rounded to bf16 (nearest even), the products exact */
    double *R16 = malloc(sizeof(double) * (size_t)M * ldc);
    ck_assert(R16);
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) {
            double acc = beta != 0.0f ? C0[(size_t)m * ldc + (n - n0)] : 0.0;
            for (int k = 0; k < Kw; k++)
                acc += (double)bf16_round(A[(size_t)m * lda + k]) * QW(n, k);
            R16[(size_t)m * ldc + (n - n0)] = acc;
        }
    double tol = 2e-6 * Kw * 4 + 1e-5;
    /* fast, portable, fast without scratch, ref, int8 activations, bf16 activations */
    for (int path = 0; path < 6; path++) {
        if (path == 3 && koff >= 0)
            continue; /* ym_matmul_ref has no column range */
        memcpy(C, C0, sizeof(float) * (size_t)M * ldc);
        ym_matmul_force_portable(path == 1);
        ym_matmul_int8_activations(path == 4);
        ym_matmul_bf16_activations(path == 5);
        if (path == 3)
            ym_matmul_ref(C, ldc, A, lda, M, &w, n0, n1, beta);
        else if (koff >= 0)
            ym_matmul_cols(C, ldc, A, lda, M, &w, n0, n1, k0, k0 + Kw, beta,
                           path == 2 ? NULL : scr);
        else
            ym_matmul(C, ldc, A, lda, M, &w, n0, n1, beta, path == 2 ? NULL : scr);
        ym_matmul_force_portable(0);
        ym_matmul_int8_activations(0);
        ym_matmul_bf16_activations(0);
        /* the int8 x int8 kernel runs where the CPU has VNNI, for int8 weights and small M */
        int vnni = path == 4 && t == YM_WT_INT8 &&
                   strcmp(ym_matmul_isa(), "avx512") == 0 && vnni_here();
        /* the bf16 x bf16 kernel where the CPU has AVX512-BF16, for bf16 weights */
        int bfdp = path == 5 && t == YM_WT_BF16 &&
                   strcmp(ym_matmul_isa(), "avx512") == 0 && bf16_here();
        const double *Rw = vnni ? R8 : bfdp ? R16 : R;
        for (int m = 0; m < M; m++)
            for (int j = 0; j < ldc; j++) {
                size_t i = (size_t)m * ldc + j;
                if (j < n1 - n0 && vnni)
                    ck_assert_msg(C[i] == E8[i] && fabs(C[i] - Rw[i]) <= tol,
                                  "int8xint8 N=%d K=%d M=%d [%d,%d) beta=%g: C[%d,%d]=%.9g want "
                                  "%.9g (%g)", N, K, M, n0, n1, beta, m, j, C[i], E8[i], Rw[i]);
                else if (j < n1 - n0)
                    ck_assert_msg(fabs(C[i] - Rw[i]) <= tol,
                                  "%s N=%d K=%d M=%d [%d,%d) beta=%g path=%d: C[%d,%d]=%g want %g",
                                  ym_wtype_name(t), N, K, M, n0, n1, beta, path, m, j, C[i],
                                  Rw[i]);
                else
                    ck_assert_msg(C[i] == C0[i], "column %d past the range was written", j);
            }
    }
    free(W);
    free(Q);
    free(data);
    free(scale);
    free(A);
    free(C0);
    free(C);
    free(scr);
    free(R);
    free(R8);
    free(E8);
    free(R16);
#undef QW
}

static void check_case(ym_wtype t, int N, int K, int M, int n0, int n1, float beta,
                       unsigned seed)
{
    check_case_cols(t, N, K, M, n0, n1, beta, seed, -1);
}

static int vnni_here(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
}

static int bf16_here(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
}

static const ym_wtype types[] = {YM_WT_F32, YM_WT_BF16, YM_WT_INT8};

START_TEST(test_matmul_matches_double_loop)
{
    /* {3, 16400}: past the bf16 GEMV's on-stack input (GEMV_KMAX), its other path */
    static const int shapes[][2] = {{1, 1}, {16, 16}, {37, 5}, {9, 17}, {50, 48}, {13, 257},
                                    {3, 16400}, {5, 1000}, {11, 33}, {7, 95}};
    /* K cut in chunks at 9+ rows; K past a multiple of 32 and 64 by 1 (the bf16 x bf16 and
     * int8 x int8 tails) */
    static const int rows[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32, 33, 40};
    unsigned seed = 7;
    for (int ti = 0; ti < 3; ti++)
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            int N = shapes[s][0], K = shapes[s][1];
            for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++)
                for (int b = 0; b < 2; b++)
                    check_case(types[ti], N, K, rows[r], 0, N, (float)b, seed++);
        }
}
END_TEST

START_TEST(test_matmul_column_ranges)
{
    /* Slices as the forward cuts them: any start, any end, empty ones too. */
    const int N = 203, K = 29;
    unsigned seed = 99;
    for (int ti = 0; ti < 3; ti++)
        for (int n0 = 0; n0 <= N; n0 += 37)
            for (int n1 = n0; n1 <= N; n1 += 53) {
                check_case(types[ti], N, K, 1, n0, n1, 1.0f, seed++);
                check_case(types[ti], N, K, 6, n0, n1, 0.0f, seed++);
                check_case(types[ti], N, K, 35, n0, n1, 1.0f, seed++);
            }
}
END_TEST

START_TEST(test_matmul_input_column_ranges)
{
    /* ym_matmul_cols: a thread's share of the inputs (x_proj and out_proj split by the
     * channels a thread owns), at any column offset (odd ones: unaligned rows), K not a
     * multiple of 16, 32 or 64, 1 to 17 rows and past the sgemm threshold, output slices. */
    static const int shapes[][3] = {{5, 1, 0}, {9, 17, 3}, {37, 63, 1}, {16, 64, 64},
                                    {13, 129, 7}, {80, 95, 33}, {3, 257, 2}};
    unsigned seed = 321;
    for (int ti = 0; ti < 3; ti++)
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            int N = shapes[s][0], K = shapes[s][1], koff = shapes[s][2];
            for (int M = 1; M <= 17; M++)
                check_case_cols(types[ti], N, K, M, 0, N, (float)(M & 1), seed++, koff);
            check_case_cols(types[ti], N, K, 40, 0, N, 0.0f, seed++, koff);
            check_case_cols(types[ti], N, K, 3, N / 3, N - N / 4, 1.0f, seed++, koff);
        }
}
END_TEST

START_TEST(test_matmul_input_column_halves_add_up)
{
    /* Two threads' shares of the inputs, summed, equal the whole product (f32 weights, so
     * only rounding separates them). */
    const int N = 21, K = 77, M = 5, h = 40;
    unsigned seed = 5;
    float W[21 * 77], A[5 * 77], C[5 * 21], P0[5 * 21], P1[5 * 21];
    for (int i = 0; i < N * K; i++)
        W[i] = frand(&seed);
    for (int i = 0; i < M * K; i++)
        A[i] = frand(&seed);
    ym_weight w = {YM_WT_F32, N, K, W, NULL};
    float *scr = malloc(sizeof(float) * ym_matmul_scratch(K));
    ck_assert(scr);
    ym_matmul(C, N, A, K, M, &w, 0, N, 0.0f, scr);
    ym_matmul_cols(P0, N, A, K, M, &w, 0, N, 0, h, 0.0f, scr);
    ym_matmul_cols(P1, N, A + h, K, M, &w, 0, N, h, K, 0.0f, scr);
    for (int i = 0; i < M * N; i++)
        ck_assert_msg(fabsf(P0[i] + P1[i] - C[i]) <= 1e-5f * (1.0f + fabsf(C[i])),
                      "C[%d] = %g, halves %g + %g", i, C[i], P0[i], P1[i]);
    /* an empty range: zeros with beta 0, C untouched with beta 1 */
    ym_matmul_cols(P0, N, A, K, M, &w, 0, N, 9, 9, 0.0f, scr);
    for (int i = 0; i < M * N; i++)
        ck_assert(P0[i] == 0.0f);
    memcpy(P1, C, sizeof(C));
    ym_matmul_cols(P1, N, A, K, M, &w, 0, N, 9, 9, 1.0f, scr);
    ck_assert_int_eq(memcmp(P1, C, sizeof(C)), 0);
    free(scr);
}
END_TEST

START_TEST(test_weight_int8_requantizes_exactly_with_its_scale)
{
    /* A row of int8 values times its scale, quantized again with that scale: the same q. */
    float src[40], back[40], s, s2;
    int8_t q[40], q2[40];
    unsigned seed = 5;
    for (int k = 0; k < 40; k++)
        src[k] = frand(&seed) * 3.0f;
    ck_assert_int_eq(ym_weight_convert(YM_WT_INT8, src, 40, 1, 40, q, &s, NULL), YM_OK);
    ym_weight w = {YM_WT_INT8, 1, 40, q, &s};
    ym_weight_row_f32(&w, 0, 0, 40, back);
    for (int k = 0; k < 40; k++)
        ck_assert(fabsf(back[k] - src[k]) <= 0.5f * s * 1.0001f);
    ck_assert_int_eq(ym_weight_convert(YM_WT_INT8, back, 40, 1, 40, q2, &s2, &s), YM_OK);
    ck_assert(s2 == s);
    ck_assert_int_eq(memcmp(q, q2, sizeof(q)), 0);
    src[3] = NAN;
    ck_assert_int_eq(ym_weight_convert(YM_WT_BF16, src, 40, 1, 40, q2, NULL, NULL), YM_EINVAL);
    /* an all-zero row: scale 0, values 0 */
    memset(src, 0, sizeof(src));
    ck_assert_int_eq(ym_weight_convert(YM_WT_INT8, src, 40, 1, 40, q, &s, NULL), YM_OK);
    ck_assert(s == 0.0f && ym_weight_at(&w, 0, 7) == 0.0f);
}
END_TEST

START_TEST(test_wtype_parse_names)
{
    ym_wtype t;
    ym_diag d = {{0}, {0}};
    ck_assert_int_eq(ym_wtype_parse("bf16", &t, &d), YM_OK);
    ck_assert_int_eq(t, YM_WT_BF16);
    ck_assert_int_eq(ym_wtype_parse("int8", &t, &d), YM_OK);
    ck_assert_int_eq(t, YM_WT_INT8);
    ck_assert_int_eq(ym_wtype_parse("auto", &t, &d), YM_OK);
    ck_assert_int_eq(t, YM_WT_AUTO);
    ck_assert_int_eq(ym_wtype_parse("q4_0", &t, &d), YM_EINVAL);
    ck_assert_ptr_nonnull(strstr(d.msg, "q4_0"));
    ck_assert_str_eq(ym_wtype_name(YM_WT_F32), "f32");
    ck_assert_uint_eq(ym_wtype_size(YM_WT_INT8), 1);
}
END_TEST

Suite *gemm_suite(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_matmul_matches_double_loop);
    tcase_add_test(tc, test_matmul_column_ranges);
    tcase_add_test(tc, test_matmul_input_column_ranges);
    tcase_add_test(tc, test_matmul_input_column_halves_add_up);
    tcase_add_test(tc, test_weight_int8_requantizes_exactly_with_its_scale);
    tcase_add_test(tc, test_wtype_parse_names);
    suite_add_tcase(s, tc);
    return s;
}
