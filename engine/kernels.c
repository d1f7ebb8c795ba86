/* engine/kernels.c - element-wise and scan kernels of the forward pass. Hot path.
 *
 * Runs on the engine thread and its pool workers, each on its own channel slice; no kernel
 * allocates. The AVX-512 versions use a polynomial exp (relative error below 2e-7 over the
 * range the scan uses), selected at run time; the portable versions use libm and are the
 * reference the tests compare against. */
#include "engine/kernels.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

static int force_portable, force_avx2;
static int isa_avx512, isa_avx2;

void ym_kernels_force_portable(int on)
{
    force_portable = on;
}

void ym_kernels_force_avx2(int on)
{
    force_avx2 = on;
}

static void detect_isa(void)
{
#if HAVE_X86
    __builtin_cpu_init();
    isa_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    isa_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

/* Once per process: the first forward pass calls this from every worker at once. */
static void check_isa(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, detect_isa);
}

static int use_avx512(void)
{
    check_isa();
    return isa_avx512 && !force_portable && !force_avx2;
}

/* Only the masked scan has an AVX2 version (the dense kernels fall back to portable). */
static int use_avx2(void)
{
    check_isa();
    return isa_avx2 && !force_portable;
}

const char *ym_kernels_isa(void)
{
    return use_avx512() ? "avx512" : use_avx2() ? "avx2" : "portable";
}

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* ---- portable ------------------------------------------------------------------------- */

static void rmsnorm_portable(float *out, const float *x, const float *w, int n, float eps)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += x[i + j] * x[i + j];
    float ss = 0.0f;
    for (int j = 0; j < 8; j++)
        ss += acc[j];
    for (; i < n; i++)
        ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

static void scan_portable(float *y, float *s, const float *A, const float *D, const float *x,
                          const float *dt, const float *z, const float *bc, int ldbc, int T,
                          int ld, int N, int c0, int c1)
{
    for (int t = 0; t < T; t++) {
        const float *B = bc + (size_t)t * ldbc, *C = B + N;
        for (int d = c0; d < c1; d++) {
            size_t i = (size_t)t * ld + d;
            float dtd = dt[i], xd = x[i], dtx = dtd * xd, acc = 0.0f;
            float *sd = s + (size_t)d * N;
            const float *Ad = A + (size_t)d * N;
            for (int n = 0; n < N; n++) {
                sd[n] = expf(dtd * Ad[n]) * sd[n] + dtx * B[n];
                acc += C[n] * sd[n];
            }
            y[i] = (acc + D[d] * xd) * silu(z[i]);
        }
    }
}

static void scan_masked_portable(float *y, float *s, const ym_scan_plan *pl, const float *D,
                                 const float *x, const float *dt, const float *z,
                                 const float *bc, int ldbc, int T, int ld, int N, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const ym_scan_block *B = &pl->blocks[b];
        const int w = B->w, d0 = B->d0;
        float *sb = s + B->off;
        const float *Ab = pl->A + B->off;
        for (int t = 0; t < T; t++) {
            const float *Bt = bc + (size_t)t * ldbc, *Ct = Bt + N;
            size_t row = (size_t)t * ld + d0;
            float acc[YM_SCAN_BLOCK] = {0};
            for (int u = 0; u < B->n_u; u++) {
                int n = B->n_idx[u];
                unsigned live = B->lanes[u];
                float *su = sb + (size_t)u * w;
                const float *Au = Ab + (size_t)u * w;
                for (int j = 0; j < w; j++) {
                    float dtd = dt[row + j];
                    float v = expf(dtd * Au[j]) * su[j] + dtd * x[row + j] * Bt[n];
                    su[j] = (live >> j) & 1 ? v : 0.0f;
                    acc[j] += Ct[n] * su[j];
                }
            }
            for (int j = 0; j < w; j++)
                y[row + j] = (acc[j] + D[d0 + j] * x[row + j]) * silu(z[row + j]);
        }
    }
}

/* ---- AVX-512 -------------------------------------------------------------------------- */
#if HAVE_X86
#define T512 __attribute__((target("avx512f,avx512dq,fma")))

static inline __mmask16 tail_mask(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* exp(x) = 2^k * p(r), x = k*ln2 + r, |r| <= ln2/2; p is Taylor to degree 7 (error < 1e-8
 * relative on that interval). Inputs are clamped to the range where f32 exp is finite. */
T512 static inline __m512 exp512(__m512 x)
{
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365478515625f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.72283172607421875f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, ln2_hi, x);
    r = _mm512_fnmadd_ps(k, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

/* log1p(e) for e in [0, 1], without forming 1 + e (which would round small e away):
 * log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3; the odd series to s^17 is exact to 5e-10. */
T512 static inline __m512 log1p01_512(__m512 e)
{
    __m512 sv = _mm512_div_ps(e, _mm512_add_ps(_mm512_set1_ps(2.0f), e));
    __m512 s2 = _mm512_mul_ps(sv, sv);
    __m512 p = _mm512_set1_ps(2.0f / 17.0f);
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 15.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 13.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 11.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 9.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 7.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 5.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 3.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f));
    return _mm512_mul_ps(p, sv);
}

/* softplus(v) = max(v, 0) + log(1 + exp(-|v|)); PyTorch returns v itself above 20. */
T512 static void softplus_rows_avx512(float *dt, int ld, int T, const float *bias, int c0, int c1)
{
    const __m512 zero = _mm512_setzero_ps();
    for (int t = 0; t < T; t++) {
        float *row = dt + (size_t)t * ld;
        for (int d = c0; d < c1; d += 16) {
            __mmask16 msk = tail_mask(c1 - d);
            __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(msk, row + d),
                                     _mm512_maskz_loadu_ps(msk, bias + d));
            __m512 a = _mm512_abs_ps(v);
            __m512 lp = log1p01_512(exp512(_mm512_sub_ps(zero, a)));
            __m512 sp = _mm512_add_ps(_mm512_max_ps(v, zero), lp);
            __mmask16 lin = _mm512_cmp_ps_mask(v, _mm512_set1_ps(20.0f), _CMP_GT_OQ);
            _mm512_mask_storeu_ps(row + d, msk, _mm512_mask_blend_ps(lin, sp, v));
        }
    }
}

T512 static inline __m512 silu512(__m512 v)
{
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

T512 static void rmsnorm_avx512(float *out, const float *x, const float *w, int n, float eps)
{
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    float r = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)n + eps);
    __m512 rv = _mm512_set1_ps(r);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 wv = _mm512_maskz_loadu_ps(m, w + i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(v, rv), wv));
    }
}

/* Lane j of the result = the sum of v[j]'s 16 elements, for 16 vectors at once: four levels
 * of shuffles and adds (each level halves the elements per vector and doubles the vectors per
 * register) instead of 16 horizontal reductions. Every vector's elements are summed in the same
 * tree ((e_i + e_i+8) + (e_i+4 + e_i+12), then pairs), whatever its position j. v is clobbered. */
T512 static inline __m512 sum16(__m512 v[16])
{
    for (int k = 0; k < 8; k++) /* 128-bit lanes: [v2k lo+hi half pairs, v2k+1 ...] */
        v[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
    for (int k = 0; k < 4; k++) /* 128-bit lane L: 4 partial sums of v[4k + L] */
        v[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xDD));
    for (int k = 0; k < 2; k++) /* lane L: 2 partials of v[8k + L], then of v[8k + 4 + L] */
        v[k] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(v[2 * k], v[2 * k + 1], 0xEE));
    /* element 4L + m = the sum of v[4m + L] */
    __m512 t = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88),
                             _mm512_shuffle_ps(v[0], v[1], 0xDD));
    const __m512i back = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(back, t);
}

T512 static void scan_avx512(float *y, float *s, const float *A, const float *D, const float *x,
                             const float *dt, const float *z, const float *bc, int ldbc, int T,
                             int ld, int N, int c0, int c1)
{
    for (int t = 0; t < T; t++) {
        const float *B = bc + (size_t)t * ldbc, *C = B + N;
        size_t row = (size_t)t * ld;
        if (N == 16) {
            /* The common case (every released Mamba-1): one vector per channel; the C.s sums
             * of 16 channels at a time by one transposing reduction, then y = (C.s + D x) *
             * silu(z) a vector at a time. */
            __m512 Bv = _mm512_loadu_ps(B), Cv = _mm512_loadu_ps(C);
            for (int d0 = c0; d0 < c1; d0 += 16) {
                int nb = c1 - d0 < 16 ? c1 - d0 : 16;
                __m512 p[16];
                for (int j = 0; j < 16; j++) {
                    if (j >= nb) {
                        p[j] = _mm512_setzero_ps();
                        continue;
                    }
                    int d = d0 + j;
                    float dtd = dt[row + d], xd = x[row + d];
                    float *sd = s + (size_t)d * 16;
                    __m512 dA = exp512(_mm512_mul_ps(_mm512_set1_ps(dtd),
                                                     _mm512_loadu_ps(A + (size_t)d * 16)));
                    __m512 sv = _mm512_fmadd_ps(dA, _mm512_loadu_ps(sd),
                                                _mm512_mul_ps(_mm512_set1_ps(dtd * xd), Bv));
                    _mm512_storeu_ps(sd, sv);
                    p[j] = _mm512_mul_ps(Cv, sv);
                }
                __mmask16 m = tail_mask(nb);
                __m512 xv = _mm512_maskz_loadu_ps(m, x + row + d0);
                __m512 yv = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, D + d0), xv, sum16(p));
                __m512 zv = _mm512_maskz_loadu_ps(m, z + row + d0);
                _mm512_mask_storeu_ps(y + row + d0, m, _mm512_mul_ps(yv, silu512(zv)));
            }
            continue;
        }
        /* Any other d_state: a channel's update in vectors of 16 entries, then its sum. */
        for (int d = c0; d < c1; d++) {
            float dtd = dt[row + d], xd = x[row + d];
            float *sd = s + (size_t)d * N;
            const float *Ad = A + (size_t)d * N;
            __m512 dtv = _mm512_set1_ps(dtd), dtx = _mm512_set1_ps(dtd * xd);
            __m512 acc = _mm512_setzero_ps();
            for (int n = 0; n < N; n += 16) {
                __mmask16 m = tail_mask(N - n);
                __m512 dA = exp512(_mm512_mul_ps(dtv, _mm512_maskz_loadu_ps(m, Ad + n)));
                __m512 sv = _mm512_fmadd_ps(dA, _mm512_maskz_loadu_ps(m, sd + n),
                                            _mm512_mul_ps(dtx, _mm512_maskz_loadu_ps(m, B + n)));
                _mm512_mask_storeu_ps(sd + n, m, sv);
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, C + n), sv, acc);
            }
            y[row + d] = _mm512_reduce_add_ps(acc) + D[d] * xd;
        }
        /* y *= silu(z), a vector at a time. */
        for (int d = c0; d < c1; d += 16) {
            __mmask16 m = tail_mask(c1 - d);
            __m512 zv = _mm512_maskz_loadu_ps(m, z + row + d);
            __m512 yv = _mm512_maskz_loadu_ps(m, y + row + d);
            _mm512_mask_storeu_ps(y + row + d, m, _mm512_mul_ps(yv, silu512(zv)));
        }
    }
}

/* The masked scan, one block of up to 16 channels per vector: per live entry of the block,
 * one exp and two FMAs for all its channels; lanes where the entry is dead are forced to 0,
 * which keeps s[d,n] at 0 as docs/ARCHITECTURE.md §4 requires. Blocks outer, rows inner: a
 * block's state (n_u vectors) stays in L1 across a prefill chunk. Hot path. */
T512 static void scan_masked_avx512(float *y, float *s, const ym_scan_plan *pl, const float *D,
                                    const float *x, const float *dt, const float *z,
                                    const float *bc, int ldbc, int T, int ld, int N, int b0,
                                    int b1)
{
    for (int b = b0; b < b1; b++) {
        const ym_scan_block *B = &pl->blocks[b];
        const int w = B->w, d0 = B->d0, n_u = B->n_u;
        const __mmask16 wm = tail_mask(w);
        float *sb = s + B->off;
        const float *Ab = pl->A + B->off;
        const __m512 Dv = _mm512_maskz_loadu_ps(wm, D + d0);
        for (int t = 0; t < T; t++) {
            const float *Bt = bc + (size_t)t * ldbc, *Ct = Bt + N;
            size_t row = (size_t)t * ld + d0;
            __m512 dtv = _mm512_maskz_loadu_ps(wm, dt + row);
            __m512 xv = _mm512_maskz_loadu_ps(wm, x + row);
            __m512 dtx = _mm512_mul_ps(dtv, xv);
            __m512 acc = _mm512_mul_ps(Dv, xv);
            for (int u = 0; u < n_u; u++) {
                int n = B->n_idx[u];
                float *su = sb + (size_t)u * w;
                __m512 dA = exp512(_mm512_mul_ps(dtv, _mm512_maskz_loadu_ps(wm, Ab + (size_t)u * w)));
                __m512 sv = _mm512_fmadd_ps(dA, _mm512_maskz_loadu_ps(wm, su),
                                            _mm512_mul_ps(dtx, _mm512_set1_ps(Bt[n])));
                sv = _mm512_maskz_mov_ps((__mmask16)B->lanes[u], sv);
                _mm512_mask_storeu_ps(su, wm, sv);
                acc = _mm512_fmadd_ps(_mm512_set1_ps(Ct[n]), sv, acc);
            }
            __m512 zv = _mm512_maskz_loadu_ps(wm, z + row);
            _mm512_mask_storeu_ps(y + row, wm, _mm512_mul_ps(acc, silu512(zv)));
        }
    }
}

/* The conv's weights [d][K] and state [d][K-1] are channel-major; the kernel wants one vector
 * per tap over 16 channels. Gathers and scatters do that but are slow: on an AMD EPYC host the
 * conv built on them took 13 % of a batch-16 decode step, where one row per sequence cannot
 * amortize them (docs/BENCHMARKS.md, optimization 9). For d_conv 4, the case of every Mamba
 * checkpoint, these load the 16 channels' 64 weights / 48 state values contiguously (masked
 * to nd channels) and de-interleave them with permutes; the store interleaves them back.   */

/* in[0..3] = 64 consecutive floats w[c][k] (c < 16, k < 4) -> out[k] lane c = w[c][k]. */
T512 static inline void conv4_load(__m512 out[4], const float *w, int nd)
{
    __m512 a[4];
    int n = nd * 4;
    for (int i = 0; i < 4; i++)
        a[i] = _mm512_maskz_loadu_ps(tail_mask(n - 16 * i > 0 ? n - 16 * i : 0), w + 16 * i);
    /* stage 1: lanes 0-7 tap k of channels 8h..8h+7 (h = 0: a0,a1; h = 1: a2,a3), lanes 8-15
     * tap k + 1 of the same channels. */
    const __m512i i01 =
        _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i i23 =
        _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    __m512 p0 = _mm512_permutex2var_ps(a[0], i01, a[1]);
    __m512 p1 = _mm512_permutex2var_ps(a[2], i01, a[3]);
    __m512 q0 = _mm512_permutex2var_ps(a[0], i23, a[1]);
    __m512 q1 = _mm512_permutex2var_ps(a[2], i23, a[3]);
    /* stage 2: low halves -> even tap, high halves -> odd tap, channels 0-7 then 8-15. */
    const __m512i lo =
        _mm512_set_epi32(23, 22, 21, 20, 19, 18, 17, 16, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i hi =
        _mm512_set_epi32(31, 30, 29, 28, 27, 26, 25, 24, 15, 14, 13, 12, 11, 10, 9, 8);
    out[0] = _mm512_permutex2var_ps(p0, lo, p1);
    out[1] = _mm512_permutex2var_ps(p0, hi, p1);
    out[2] = _mm512_permutex2var_ps(q0, lo, q1);
    out[3] = _mm512_permutex2var_ps(q0, hi, q1);
}

/* 48 consecutive floats s[c][j] (c < 16, j < 3) -> out[j] lane c = s[c][j]. Flat index
 * 3c + j: below 32 it is in b0/b1 (permutex2var), from 32 in b2 (a masked permute). */
T512 static inline void conv3_state_load(__m512 out[3], const float *s, int nd)
{
    /* LD_IDX[j][c] = 3c + j, minus 32 where that is in b2 (lanes HIGH[j]). */
    static const int32_t LD_IDX[3][16] = {
        {0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 1, 4, 7, 10, 13},
        {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 2, 5, 8, 11, 14},
        {2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 3, 6, 9, 12, 15}};
    static const __mmask16 HIGH[3] = {0xf800, 0xf800, 0xfc00};
    __m512 b[3];
    int n = nd * 3;
    for (int i = 0; i < 3; i++)
        b[i] = _mm512_maskz_loadu_ps(tail_mask(n - 16 * i > 0 ? n - 16 * i : 0), s + 16 * i);
    for (int j = 0; j < 3; j++) {
        __m512i iv = _mm512_loadu_si512(LD_IDX[j]);
        __m512 t = _mm512_permutex2var_ps(b[0], iv, b[1]);
        out[j] = _mm512_mask_permutexvar_ps(t, HIGH[j], iv, b[2]);
    }
}

/* The inverse: in[j] lane c -> s[3c + j], for c < nd only. */
T512 static inline void conv3_state_store(float *s, const __m512 in[3], int nd)
{
    /* Flat f = 16v + i comes from in[f % 3] lane f / 3: ST_IDX selects in[0] lane c (tap 0)
     * or in[1] lane c (c + 16, tap 1); lanes TWO[v] (tap 2) then take in[2] lane ST_C. */
    static const int32_t ST_IDX[3][16] = {
        {0, 16, 0, 1, 17, 1, 2, 18, 2, 3, 19, 3, 4, 20, 4, 5},
        {21, 5, 6, 22, 6, 7, 23, 7, 8, 24, 8, 9, 25, 9, 10, 26},
        {10, 11, 27, 11, 12, 28, 12, 13, 29, 13, 14, 30, 14, 15, 31, 15}};
    static const int32_t ST_C[3][16] = {
        {0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5},
        {5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10},
        {10, 11, 11, 11, 12, 12, 12, 13, 13, 13, 14, 14, 14, 15, 15, 15}};
    static const __mmask16 TWO[3] = {0x4924, 0x2492, 0x9249};
    int n = nd * 3;
    for (int v = 0; v < 3 && n - 16 * v > 0; v++) {
        __m512 t = _mm512_permutex2var_ps(in[0], _mm512_loadu_si512(ST_IDX[v]), in[1]);
        t = _mm512_mask_permutexvar_ps(t, TWO[v], _mm512_loadu_si512(ST_C[v]), in[2]);
        _mm512_mask_storeu_ps(s + 16 * v, tail_mask(n - 16 * v), t);
    }
}

/* Causal conv + silu for one block of up to 16 channels, all T rows, vectorized across the
 * channels (rows are contiguous in d). In place, so rows are visited last to first: row t
 * reads inputs t-K+1..t, which a descending walk has not overwritten yet. The new state (the
 * last K-1 inputs) is taken before the walk and stored after it.                           */
T512 static void conv_block_avx512(float *x, int ld, int T, float *cstate, const float *w,
                                   const float *b, int K, int d, int nd)
{
    enum { KMAX = 16 };
    __mmask16 msk = tail_mask(nd);
    const int km1 = K - 1;
    __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i widx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(K));
    __m512i sidx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(km1 > 0 ? km1 : 1));
    __m512 wk[KMAX], st[KMAX], nst[KMAX];
    for (int k = 0; k < KMAX; k++)
        wk[k] = st[k] = nst[k] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++)
        wk[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), msk, widx, w + (size_t)d * K + k, 4);
    for (int k = 0; k < km1; k++)
        st[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), msk, sidx,
                                         cstate + (size_t)d * km1 + k, 4);
    __m512 bias = b != NULL ? _mm512_maskz_loadu_ps(msk, b + d) : _mm512_setzero_ps();
    for (int j = 0; j < km1; j++) {
        int t = T - km1 + j; /* input index of the new state's entry j */
        nst[j] = t >= 0 ? _mm512_maskz_loadu_ps(msk, x + (size_t)t * ld + d) : st[km1 + t];
    }
    for (int t = T - 1; t >= 0; t--) {
        __m512 acc = bias;
        for (int k = 0; k < K; k++) {
            int i = t - km1 + k;
            __m512 v = i >= 0 ? _mm512_maskz_loadu_ps(msk, x + (size_t)i * ld + d) : st[km1 + i];
            acc = _mm512_fmadd_ps(wk[k], v, acc);
        }
        _mm512_mask_storeu_ps(x + (size_t)t * ld + d, msk, silu512(acc));
    }
    for (int j = 0; j < km1; j++)
        _mm512_mask_i32scatter_ps(cstate + (size_t)d * km1 + j, msk, sidx, nst[j], 4);
}

/* conv_block_avx512 for d_conv 4 (every Mamba checkpoint): the same arithmetic in the same
 * order, with the taps and the state de-interleaved by permutes instead of gathers and
 * scatters, and fixed-size register arrays (the generic block zeroes 3 KB of stack per call). */
T512 static void conv4_block_avx512(float *x, int ld, int T, float *cstate, const float *w,
                                    const float *b, int d, int nd)
{
    __mmask16 msk = tail_mask(nd);
    __m512 wk[4], st[3], nst[3];
    conv4_load(wk, w + (size_t)d * 4, nd);
    conv3_state_load(st, cstate + (size_t)d * 3, nd);
    __m512 bias = b != NULL ? _mm512_maskz_loadu_ps(msk, b + d) : _mm512_setzero_ps();
    for (int j = 0; j < 3; j++) {
        int t = T - 3 + j;
        nst[j] = t >= 0 ? _mm512_maskz_loadu_ps(msk, x + (size_t)t * ld + d) : st[3 + t];
    }
    for (int t = T - 1; t >= 0; t--) {
        __m512 acc = bias;
        for (int k = 0; k < 4; k++) {
            int i = t - 3 + k;
            __m512 v = i >= 0 ? _mm512_maskz_loadu_ps(msk, x + (size_t)i * ld + d) : st[3 + i];
            acc = _mm512_fmadd_ps(wk[k], v, acc);
        }
        _mm512_mask_storeu_ps(x + (size_t)t * ld + d, msk, silu512(acc));
    }
    conv3_state_store(cstate + (size_t)d * 3, nst, nd);
}
#endif

/* ---- AVX2 (the masked scan only) ------------------------------------------------------ */
#if HAVE_X86
#define T256 __attribute__((target("avx2,fma")))

/* exp as exp512 above: 2^k * p(r); 2^k built in the exponent bits, so x is clamped to where k
 * stays in the normal range [-126, 127]. */
T256 static inline __m256 exp256(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)),
                                  23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* All-ones in lane j where bit j of bits (8 bits) is set. */
T256 static inline __m256i bits_mask(unsigned bits)
{
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), bit), bit);
}

/* The masked scan on 8-wide vectors: a block of 16 channels is two halves. Same arithmetic as
 * scan_masked_avx512. Hot path on CPUs without AVX-512. */
T256 static void scan_masked_avx2(float *y, float *s, const ym_scan_plan *pl, const float *D,
                                  const float *x, const float *dt, const float *z,
                                  const float *bc, int ldbc, int T, int ld, int N, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const ym_scan_block *B = &pl->blocks[b];
        const int w = B->w, d0 = B->d0, n_u = B->n_u, nh = (w + 7) / 8;
        const unsigned wbits = (1u << w) - 1u;
        float *sb = s + B->off;
        const float *Ab = pl->A + B->off;
        __m256i wm[2];
        __m256 Dv[2];
        for (int h = 0; h < nh; h++) {
            wm[h] = bits_mask((wbits >> (8 * h)) & 0xffu);
            Dv[h] = _mm256_maskload_ps(D + d0 + 8 * h, wm[h]);
        }
        for (int t = 0; t < T; t++) {
            const float *Bt = bc + (size_t)t * ldbc, *Ct = Bt + N;
            size_t row = (size_t)t * ld + d0;
            __m256 dtv[2], xv[2], dtx[2], acc[2];
            for (int h = 0; h < nh; h++) {
                dtv[h] = _mm256_maskload_ps(dt + row + 8 * h, wm[h]);
                xv[h] = _mm256_maskload_ps(x + row + 8 * h, wm[h]);
                dtx[h] = _mm256_mul_ps(dtv[h], xv[h]);
                acc[h] = _mm256_mul_ps(Dv[h], xv[h]);
            }
            for (int u = 0; u < n_u; u++) {
                int n = B->n_idx[u];
                __m256 Bn = _mm256_set1_ps(Bt[n]), Cn = _mm256_set1_ps(Ct[n]);
                for (int h = 0; h < nh; h++) {
                    float *su = sb + (size_t)u * w + 8 * h;
                    __m256 a = _mm256_maskload_ps(Ab + (size_t)u * w + 8 * h, wm[h]);
                    __m256 sv = _mm256_fmadd_ps(exp256(_mm256_mul_ps(dtv[h], a)),
                                                _mm256_maskload_ps(su, wm[h]),
                                                _mm256_mul_ps(dtx[h], Bn));
                    __m256i lm = bits_mask(((unsigned)B->lanes[u] >> (8 * h)) & 0xffu);
                    sv = _mm256_and_ps(sv, _mm256_castsi256_ps(lm));
                    _mm256_maskstore_ps(su, wm[h], sv);
                    acc[h] = _mm256_fmadd_ps(Cn, sv, acc[h]);
                }
            }
            for (int h = 0; h < nh; h++) {
                __m256 zv = _mm256_maskload_ps(z + row + 8 * h, wm[h]);
                __m256 sz = _mm256_div_ps(zv, _mm256_add_ps(_mm256_set1_ps(1.0f),
                                                            exp256(_mm256_sub_ps(
                                                                _mm256_setzero_ps(), zv))));
                _mm256_maskstore_ps(y + row + 8 * h, wm[h], _mm256_mul_ps(acc[h], sz));
            }
        }
    }
}
#endif

/* ---- dispatch ------------------------------------------------------------------------- */

void ym_rmsnorm_f32(float *out, const float *x, const float *w, int n, float eps)
{
#if HAVE_X86
    if (use_avx512()) {
        rmsnorm_avx512(out, x, w, n, eps);
        return;
    }
#endif
    rmsnorm_portable(out, x, w, n, eps);
}

void ym_conv_silu_f32(float *x, int ld, int T, float *cstate, const float *w, const float *b,
                      int K, int c0, int c1)
{
#if HAVE_X86
    if (use_avx512() && K == 4) {
        for (int d = c0; d < c1; d += 16)
            conv4_block_avx512(x, ld, T, cstate, w, b, d, c1 - d < 16 ? c1 - d : 16);
        return;
    }
    if (use_avx512() && K <= 16) {
        for (int d = c0; d < c1; d += 16)
            conv_block_avx512(x, ld, T, cstate, w, b, K, d, c1 - d < 16 ? c1 - d : 16);
        return;
    }
#endif
    /* Portable: per channel, the state window rolled in place, then silu. */
    int km1 = K - 1;
    for (int d = c0; d < c1; d++) {
        float *st = cstate + (size_t)d * km1;
        const float *wd = w + (size_t)d * K;
        float bias = b != NULL ? b[d] : 0.0f;
        for (int t = 0; t < T; t++) {
            float *xp = x + (size_t)t * ld + d;
            float in = *xp, acc = bias;
            for (int k = 0; k < km1; k++)
                acc += wd[k] * st[k];
            acc += wd[km1] * in;
            for (int k = 0; k + 1 < km1; k++)
                st[k] = st[k + 1];
            if (km1 > 0)
                st[km1 - 1] = in;
            *xp = silu(acc);
        }
    }
}

void ym_softplus_bias_f32(float *dt, int ld, int T, const float *bias, int c0, int c1)
{
#if HAVE_X86
    if (use_avx512()) {
        softplus_rows_avx512(dt, ld, T, bias, c0, c1);
        return;
    }
#endif
    for (int t = 0; t < T; t++) {
        float *row = dt + (size_t)t * ld;
        for (int d = c0; d < c1; d++) {
            float v = row[d] + bias[d];
            row[d] = v > 20.0f ? v : log1pf(expf(v));
        }
    }
}

void ym_scan_f32(float *y, float *s, const float *A, const float *D, const float *x,
                 const float *dt, const float *z, const float *bc, int ldbc, int T, int ld,
                 int N, int c0, int c1)
{
#if HAVE_X86
    if (use_avx512()) {
        scan_avx512(y, s, A, D, x, dt, z, bc, ldbc, T, ld, N, c0, c1);
        return;
    }
#endif
    scan_portable(y, s, A, D, x, dt, z, bc, ldbc, T, ld, N, c0, c1);
}

void ym_scan_masked_f32(float *y, float *s, const ym_scan_plan *plan, const float *D,
                        const float *x, const float *dt, const float *z, const float *bc,
                        int ldbc, int T, int ld, int N, int b0, int b1)
{
#if HAVE_X86
    if (use_avx512()) {
        scan_masked_avx512(y, s, plan, D, x, dt, z, bc, ldbc, T, ld, N, b0, b1);
        return;
    }
    if (use_avx2()) {
        scan_masked_avx2(y, s, plan, D, x, dt, z, bc, ldbc, T, ld, N, b0, b1);
        return;
    }
#endif
    scan_masked_portable(y, s, plan, D, x, dt, z, bc, ldbc, T, ld, N, b0, b1);
}
