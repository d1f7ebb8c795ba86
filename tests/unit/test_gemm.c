/* tests/unit/test_gemm.c - the packed-panel GEMM (engine/gemm.c) against a plain
 * double-precision loop over the unpacked weight: odd shapes (N and K not multiples of 16),
 * 1 to 13 rows, beta 0 and 1, column ranges that start on any panel and end anywhere. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gemm.h"
#include "testutil.h"

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

/* C[m, n - n0] = sum_k A[m, k] W[n, k] + beta * C0[m, n - n0], in double. */
static void ref(double *C, const float *C0, int ldc, const float *A, int lda, const float *W,
                int ldw, int n0, int n1, int M, int K, float beta)
{
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) {
            double acc = beta != 0.0f ? C0[(size_t)m * ldc + (n - n0)] : 0.0;
            for (int k = 0; k < K; k++)
                acc += (double)A[(size_t)m * lda + k] * W[(size_t)n * ldw + k];
            C[(size_t)m * ldc + (n - n0)] = acc;
        }
}

/* Runs one case through the fast kernel (when the CPU has it) and the plain one; both must
 * match the double loop to float rounding of a K-term sum, and leave other columns alone. */
static void check_case(int N, int K, int M, int n0, int n1, float beta, unsigned seed)
{
    int ldw = K + 3, lda = K + 5, ldc = (n1 - n0) + 7;
    float *W = malloc(sizeof(float) * (size_t)N * ldw);
    float *A = malloc(sizeof(float) * (size_t)M * lda);
    float *C0 = malloc(sizeof(float) * (size_t)M * ldc);
    float *C = malloc(sizeof(float) * (size_t)M * ldc);
    double *R = malloc(sizeof(double) * (size_t)M * ldc);
    ck_assert(W && A && C0 && C && R);
    for (size_t i = 0; i < (size_t)N * ldw; i++)
        W[i] = frand(&seed);
    for (size_t i = 0; i < (size_t)M * lda; i++)
        A[i] = frand(&seed);
    for (size_t i = 0; i < (size_t)M * ldc; i++)
        C0[i] = frand(&seed);
    ym_packed pk;
    ck_assert_int_eq(ym_pack_init(&pk, W, ldw, N, K), YM_OK);
    ck_assert_int_eq(pk.n_panels, (N + 15) / 16);
    ref(R, C0, ldc, A, lda, W, ldw, n0, n1, M, K, beta);
    double tol = 1e-5 * K + 1e-5;
    for (int fast = 0; fast < 2; fast++) {
        memcpy(C, C0, sizeof(float) * (size_t)M * ldc);
        if (fast) {
            if (!ym_gemm_packed(C, ldc, A, lda, &pk, n0, n1, M, beta))
                continue; /* no AVX-512 here */
        } else {
            ym_gemm_packed_ref(C, ldc, A, lda, &pk, n0, n1, M, beta);
        }
        for (int m = 0; m < M; m++)
            for (int j = 0; j < ldc; j++) {
                size_t i = (size_t)m * ldc + j;
                if (j < n1 - n0)
                    ck_assert_msg(fabs(C[i] - R[i]) <= tol,
                                  "N=%d K=%d M=%d [%d,%d) beta=%g fast=%d: C[%d,%d]=%g want %g",
                                  N, K, M, n0, n1, beta, fast, m, j, C[i], R[i]);
                else
                    ck_assert_msg(C[i] == C0[i], "column %d past the range was written", j);
            }
    }
    ym_pack_deinit(&pk);
    ck_assert_ptr_null(pk.p);
    free(W);
    free(A);
    free(C0);
    free(C);
    free(R);
}

START_TEST(test_gemm_packed_matches_double_loop)
{
    static const int shapes[][2] = {{1, 1}, {16, 16}, {37, 5}, {50, 48}, {80, 70}, {203, 33}};
    unsigned seed = 7;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int N = shapes[s][0], K = shapes[s][1];
        for (int M = 1; M <= 13; M++)
            for (int b = 0; b < 2; b++)
                check_case(N, K, M, 0, N, (float)b, seed++);
    }
}
END_TEST

START_TEST(test_gemm_packed_column_ranges)
{
    /* Slices as the forward cuts them: 16-aligned starts, any end, empty ones too. */
    const int N = 203, K = 29;
    unsigned seed = 99;
    for (int n0 = 0; n0 <= N; n0 += 16)
        for (int n1 = n0; n1 <= N; n1 += n0 % 32 == 0 ? 13 : 41) {
            check_case(N, K, 5, n0, n1, 1.0f, seed++);
            check_case(N, K, 12, n0, n1, 0.0f, seed++);
        }
    check_case(N, K, 9, 192, N, 0.0f, seed++);
}
END_TEST

START_TEST(test_gemm_pack_refuses_bad_shapes)
{
    float w[4] = {0};
    ym_packed pk;
    ck_assert_int_eq(ym_pack_init(&pk, w, 2, 0, 2), YM_EINVAL);
    ck_assert_int_eq(ym_pack_init(&pk, w, 1, 2, 2), YM_EINVAL);
    ck_assert_int_eq(ym_pack_init(&pk, NULL, 2, 2, 2), YM_EINVAL);
    ck_assert_ptr_null(pk.p);
    ym_pack_deinit(&pk);
    ym_pack_deinit(NULL);
}
END_TEST

Suite *gemm_suite(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gemm_packed_matches_double_loop);
    tcase_add_test(tc, test_gemm_packed_column_ranges);
    tcase_add_test(tc, test_gemm_pack_refuses_bad_shapes);
    suite_add_tcase(s, tc);
    return s;
}
