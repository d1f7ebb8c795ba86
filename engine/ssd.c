/* engine/ssd.c - Mamba-2's SSD layer: dt, decode step, chunked prefill, gated RMSNorm per group.
 *
 * Owns: the per-head state update of one token, the chunked SSD algorithm (Dao & Gu 2024,
 * "Transformers are SSMs", section 6) as sgemm calls per chunk, and the grouped gated norm;
 * and the same for a served sparse layer (ym_ssd_plan: kept heads, each with its own live state
 * entries gathered into whole 16-lane slots).
 * Runs: on the engine thread or a pool worker, each on its own head range and scratch; calls
 * OpenBLAS sgemm, which the engine keeps single-threaded.
 * Must not: allocate, keep state between calls, or read outside the given head range of y/s.
 * The _ref functions are plain loops, the reference the unit tests compare against. */
#include "engine/ssd.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#define T512 __attribute__((target("avx512f,avx512dq,fma")))
#else
#define HAVE_X86 0
#endif

/* PyTorch's softplus (beta 1, threshold 20): the input itself above 20. */
static inline float softplus(float v)
{
    return v > 20.0f ? v : log1pf(expf(v));
}

void ym_ssd_dt_f32(float *dt, int ld, int T, const float *bias, int n_head, float lo, float hi)
{
    for (int t = 0; t < T; t++) {
        float *row = dt + (size_t)t * ld;
        for (int h = 0; h < n_head; h++) {
            float v = softplus(row[h] + bias[h]);
            /* torch.clamp(dt, lo, hi): min(max(v, lo), hi) */
            v = v < lo ? lo : v;
            row[h] = v > hi ? hi : v;
        }
    }
}

/* ---- decode step ------------------------------------------------------------------------ */

void ym_ssd_step_ref(float *y, float *s, const float *x, const float *dt, const float *A,
                     const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                     int h0, int h1)
{
    const int P = d->head_dim, N = d->d_state, per = d->n_head / d->n_group;
    for (int h = h0; h < h1; h++) {
        const float *Bg = B + (size_t)(h / per) * N, *Cg = C + (size_t)(h / per) * N;
        const float dA = expf(dt[h] * A[h]);
        for (int p = 0; p < P; p++) {
            float *sp = s + ((size_t)h * P + p) * N;
            const float xp = x[(size_t)h * P + p], u = dt[h] * xp;
            float acc = 0.0f;
            for (int n = 0; n < N; n++) {
                sp[n] = dA * sp[n] + u * Bg[n];
                acc += sp[n] * Cg[n];
            }
            y[(size_t)h * P + p] = acc + D[h] * xp;
        }
    }
}

#if HAVE_X86
static inline __mmask16 tail_mask(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* One head's step over k state entries per channel (rows of k floats from s; Bk, Ck [k]):
 * the AVX-512 form of head_step_ref, for the dense step (k = N) and the sparse one. */
T512 static inline void head_step_avx512(float *y, float *s, const float *x, float dt, float A,
                                         float D, const float *Bk, const float *Ck, int P, int k)
{
    const __m512 dA = _mm512_set1_ps(expf(dt * A));
    for (int p = 0; p < P; p++) {
        float *sp = s + (size_t)p * k;
        const __m512 u = _mm512_set1_ps(dt * x[p]);
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < k; j += 16) {
            __mmask16 m = tail_mask(k - j);
            __m512 sv = _mm512_maskz_loadu_ps(m, sp + j);
            sv = _mm512_fmadd_ps(dA, sv, _mm512_mul_ps(u, _mm512_maskz_loadu_ps(m, Bk + j)));
            _mm512_mask_storeu_ps(sp + j, m, sv);
            acc = _mm512_fmadd_ps(sv, _mm512_maskz_loadu_ps(m, Ck + j), acc);
        }
        y[p] = _mm512_reduce_add_ps(acc) + D * x[p];
    }
}

/* Hot path of decode: the state is read and written once (N floats per channel), so this is
 * bound by memory; 16 lanes over n keep the loads wide. */
T512 static void step_avx512(float *y, float *s, const float *x, const float *dt, const float *A,
                             const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                             int h0, int h1)
{
    const int P = d->head_dim, N = d->d_state, per = d->n_head / d->n_group;
    for (int h = h0; h < h1; h++)
        head_step_avx512(y + (size_t)h * P, s + (size_t)h * P * N, x + (size_t)h * P, dt[h],
                         A[h], D[h], B + (size_t)(h / per) * N, C + (size_t)(h / per) * N, P, N);
}

static int have_avx512(void)
{
    static int checked, yes;
    if (!checked) {
        __builtin_cpu_init();
        yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
        checked = 1;
    }
    return yes;
}
#endif

void ym_ssd_step_f32(float *y, float *s, const float *x, const float *dt, const float *A,
                     const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                     int h0, int h1)
{
#if HAVE_X86
    if (have_avx512()) {
        step_avx512(y, s, x, dt, A, D, B, C, d, h0, h1);
        return;
    }
#endif
    ym_ssd_step_ref(y, s, x, dt, A, D, B, C, d, h0, h1);
}

void ym_ssd_prefill_ref(float *y, int ldy, float *s, const float *x, int ldx, const float *dt,
                        int lddt, const float *B, const float *C, int ldbc, const float *A,
                        const float *D, int T, const ym_ssd_dims *d, int h0, int h1)
{
    for (int t = 0; t < T; t++)
        ym_ssd_step_ref(y + (size_t)t * ldy, s, x + (size_t)t * ldx, dt + (size_t)t * lddt, A, D,
                        B + (size_t)t * ldbc, C + (size_t)t * ldbc, d, h0, h1);
}

/* ---- chunked SSD prefill ------------------------------------------------------------------ */

size_t ym_ssd_prefill_work(const ym_ssd_dims *d, int chunk)
{
    size_t Q = (size_t)(chunk > 0 ? chunk : 1), N = (size_t)d->d_state;
    return 2 * Q * Q /* CB, M */ + 2 * Q * N /* Cs, Bw */ + 3 * Q /* cum, e+, e- */;
}

/* Above this total log-decay in a chunk, exp(cum_i) * exp(-cum_j) could overflow or lose
 * exp(cum_i) to underflow in f32 (e^88 is near FLT_MAX): take exp(cum_i - cum_j) directly. */
#define FACTOR_LIMIT 60.0f

/* One chunk of Q tokens, one group's heads in [h0, h1). With a_t = dt[t,h]*A[h] and
 * cum_i = a_0 + ... + a_i (inclusive, within the chunk), for each head h:
 *   CB       = C_g B_g^T                                              [Q, Q] (once per group)
 *   M[i,j]   = CB[i,j] * exp(cum_i - cum_j) * dt_j  (j <= i; 0 above the diagonal)
 *   Y_h      = M X_h                                  intra-chunk (diagonal block)
 *   Y_h     += diag(exp(cum)) C_g S_h^T               the state entering the chunk (off-diagonal)
 *   Y_h     += D[h] X_h
 *   S_h      = exp(cum_last) S_h + X_h^T diag(exp(cum_last - cum) * dt) B_g    (chunk state)
 * The last line is the recurrence between chunks: the next chunk starts from the new S_h. */
static void chunk_group(float *y, int ldy, float *s, const float *x, int ldx, const float *dt,
                        int lddt, const float *Bg, const float *Cg, int ldbc, const float *A,
                        const float *D, int Q, const ym_ssd_dims *d, int h0, int h1, float *work)
{
    const int P = d->head_dim, N = d->d_state;
    float *CB = work, *M = CB + (size_t)Q * Q, *Cs = M + (size_t)Q * Q, *Bw = Cs + (size_t)Q * N;
    float *cum = Bw + (size_t)Q * N, *ep = cum + Q, *em = ep + Q;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, Q, N, 1.0f, Cg, ldbc, Bg, ldbc, 0.0f,
                CB, Q);
    for (int h = h0; h < h1; h++) {
        float acc = 0.0f;
        for (int i = 0; i < Q; i++) {
            acc += dt[(size_t)i * lddt + h] * A[h];
            cum[i] = acc;
        }
        const float last = cum[Q - 1];
        if (-last <= FACTOR_LIMIT) {
            /* exp(cum_i - cum_j) = exp(cum_i) * exp(-cum_j): 2Q exps instead of Q^2/2 */
            for (int i = 0; i < Q; i++) {
                ep[i] = expf(cum[i]);
                em[i] = expf(-cum[i]) * dt[(size_t)i * lddt + h];
            }
            for (int i = 0; i < Q; i++) {
                float *Mi = M + (size_t)i * Q;
                const float *CBi = CB + (size_t)i * Q;
                for (int j = 0; j <= i; j++)
                    Mi[j] = CBi[j] * ep[i] * em[j];
                for (int j = i + 1; j < Q; j++)
                    Mi[j] = 0.0f;
            }
        } else {
            for (int i = 0; i < Q; i++) {
                float *Mi = M + (size_t)i * Q;
                const float *CBi = CB + (size_t)i * Q;
                for (int j = 0; j <= i; j++)
                    Mi[j] = CBi[j] * expf(cum[i] - cum[j]) * dt[(size_t)j * lddt + h];
                for (int j = i + 1; j < Q; j++)
                    Mi[j] = 0.0f;
                ep[i] = expf(cum[i]);
            }
        }
        const float *Xh = x + (size_t)h * P;
        float *Yh = y + (size_t)h * P;
        float *Sh = s + (size_t)h * P * N;
        /* intra-chunk: Y_h = M X_h */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Q, P, Q, 1.0f, M, Q, Xh, ldx, 0.0f,
                    Yh, ldy);
        /* off-diagonal: Y_h += (diag(exp(cum)) C_g) S_h^T, with the state before this chunk */
        for (int i = 0; i < Q; i++)
            for (int n = 0; n < N; n++)
                Cs[(size_t)i * N + n] = ep[i] * Cg[(size_t)i * ldbc + n];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, P, N, 1.0f, Cs, N, Sh, N, 1.0f, Yh,
                    ldy);
        for (int i = 0; i < Q; i++)
            for (int p = 0; p < P; p++)
                Yh[(size_t)i * ldy + p] += D[h] * Xh[(size_t)i * ldx + p];
        /* chunk state: S_h = exp(last) S_h + X_h^T (w * B_g), w_i = exp(last - cum_i) dt_i */
        for (int i = 0; i < Q; i++) {
            const float wi = expf(last - cum[i]) * dt[(size_t)i * lddt + h];
            for (int n = 0; n < N; n++)
                Bw[(size_t)i * N + n] = wi * Bg[(size_t)i * ldbc + n];
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, N, Q, 1.0f, Xh, ldx, Bw, N,
                    expf(last), Sh, N);
    }
}

void ym_ssd_prefill_f32(float *y, int ldy, float *s, const float *x, int ldx, const float *dt,
                        int lddt, const float *B, const float *C, int ldbc, const float *A,
                        const float *D, int T, const ym_ssd_dims *d, int chunk, int h0, int h1,
                        float *work)
{
    const int per = d->n_head / d->n_group, N = d->d_state;
    if (chunk < 1)
        chunk = 1;
    for (int c0 = 0; c0 < T; c0 += chunk) {
        const int Q = T - c0 < chunk ? T - c0 : chunk;
        const size_t r = (size_t)c0;
        /* heads of one group share B_g, C_g and so C_g B_g^T */
        for (int g = h0 / per; g * per < h1; g++) {
            int a = g * per > h0 ? g * per : h0, b = (g + 1) * per < h1 ? (g + 1) * per : h1;
            chunk_group(y + r * ldy, ldy, s, x + r * ldx, ldx, dt + r * lddt, lddt,
                        B + r * ldbc + (size_t)g * N, C + r * ldbc + (size_t)g * N, ldbc, A, D, Q,
                        d, a, b, work);
        }
    }
}

/* ---- gated RMSNorm per group ------------------------------------------------------------- */

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

void ym_gated_rmsnorm_ref(float *out, int ldo, const float *y, int ldy, const float *z, int ldz,
                          int T, const float *w, int d_inner, int n_group, float eps)
{
    const int gs = d_inner / n_group;
    for (int t = 0; t < T; t++) {
        const float *yt = y + (size_t)t * ldy, *zt = z + (size_t)t * ldz;
        float *ot = out + (size_t)t * ldo;
        for (int g = 0; g < n_group; g++) {
            double ss = 0.0;
            for (int c = g * gs; c < (g + 1) * gs; c++) {
                double v = (double)yt[c] * ((double)zt[c] / (1.0 + exp(-(double)zt[c])));
                ss += v * v;
            }
            const double r = 1.0 / sqrt(ss / gs + eps);
            for (int c = g * gs; c < (g + 1) * gs; c++) {
                double v = (double)yt[c] * ((double)zt[c] / (1.0 + exp(-(double)zt[c])));
                ot[c] = (float)(v * r * w[c]);
            }
        }
    }
}

void ym_gated_rmsnorm_f32(float *out, int ldo, const float *y, int ldy, const float *z, int ldz,
                          int T, const float *w, int d_inner, int n_group, float eps)
{
    const int gs = d_inner / n_group;
    for (int t = 0; t < T; t++) {
        const float *yt = y + (size_t)t * ldy, *zt = z + (size_t)t * ldz;
        float *ot = out + (size_t)t * ldo;
        for (int g = 0; g < n_group; g++) {
            const int c0 = g * gs, c1 = c0 + gs;
            float ss = 0.0f;
            /* out may alias y: write v first, then scale in place */
            for (int c = c0; c < c1; c++) {
                const float v = yt[c] * silu(zt[c]);
                ot[c] = v;
                ss += v * v;
            }
            const float r = 1.0f / sqrtf(ss / (float)gs + eps);
            for (int c = c0; c < c1; c++)
                ot[c] = ot[c] * r * w[c];
        }
    }
}

/* y[c] := y[c] * silu(z[c]) for c in [a, b), and the sum of the squares of the results. */
static inline float gate_sumsq(float *y, const float *z, int a, int b)
{
    float acc = 0.0f;
    for (int c = a; c < b; c++) {
        const float v = y[c] * silu(z[c]);
        y[c] = v;
        acc += v * v;
    }
    return acc;
}

void ym_gate_sumsq_f32(float *y, int ldy, const float *z, int ldz, int T, int d_inner,
                       int n_group, int c0, int c1, float *ss)
{
    const int gs = d_inner / n_group;
    for (int t = 0; t < T; t++) {
        float *yt = y + (size_t)t * ldy;
        const float *zt = z + (size_t)t * ldz;
        float *st = ss + (size_t)t * n_group;
        for (int g = 0; g < n_group; g++) {
            const int a = c0 > g * gs ? c0 : g * gs, b = c1 < (g + 1) * gs ? c1 : (g + 1) * gs;
            st[g] = gate_sumsq(yt, zt, a, b);
        }
    }
}

void ym_group_scale_f32(float *out, int ldo, const float *v, int ldv, int T, const float *ss,
                        int n_parts, size_t part_stride, const float *w, int d_inner,
                        int n_group, float eps)
{
    const int gs = d_inner / n_group;
    for (int t = 0; t < T; t++) {
        const float *vt = v + (size_t)t * ldv;
        float *ot = out + (size_t)t * ldo;
        for (int g = 0; g < n_group; g++) {
            float tot = 0.0f; /* the parts in their order: every caller gets the same bits */
            for (int i = 0; i < n_parts; i++)
                tot += ss[(size_t)i * part_stride + (size_t)t * n_group + g];
            const float r = 1.0f / sqrtf(tot / (float)gs + eps);
            for (int c = g * gs; c < (g + 1) * gs; c++)
                ot[c] = vt[c] * r * w[c];
        }
    }
}

/* ---- a served sparse layer (ym_ssd_plan) ------------------------------------------------ */

/* One head, one token, its k live entries (Bk, Ck and s [P, k] compact):
 *   s[p,j] = exp(dt*A) * s[p,j] + dt * x[p] * Bk[j];   y[p] = sum_j s[p,j] * Ck[j] + D * x[p] */
static void head_step_ref(float *y, float *s, const float *x, float dt, float A, float D,
                          const float *Bk, const float *Ck, int P, int k)
{
    const float dA = expf(dt * A);
    for (int p = 0; p < P; p++) {
        float *sp = s + (size_t)p * k;
        const float u = dt * x[p];
        float acc = 0.0f;
        for (int j = 0; j < k; j++) {
            sp[j] = dA * sp[j] + u * Bk[j];
            acc += sp[j] * Ck[j];
        }
        y[p] = acc + D * x[p];
    }
}

/* The most slots a head has: N rounded up to 16. */
static inline int slots_max(int N)
{
    return (N + 15) / 16 * 16;
}

/* Head h's B and C slots: its live entries of B_g, C_g gathered, 0 in the padding. */
static inline void gather_slots(float *Bk, float *Ck, const float *Bg, const float *Cg,
                                const int32_t *ix, int k)
{
    for (int j = 0; j < k; j++) {
        Bk[j] = ix[j] >= 0 ? Bg[ix[j]] : 0.0f;
        Ck[j] = ix[j] >= 0 ? Cg[ix[j]] : 0.0f;
    }
}

/* Head h's operands for a sparse step: its slot count (returned), its B and C (the group's,
 * or its live entries gathered into Bk / Ck) and where its state rows start in s. */
static inline int head_operands(const ym_ssd_plan *pl, int h, const float *B, const float *C,
                                float *s, int P, int N, float *Bk, float *Ck,
                                const float **Bu, const float **Cu, float **sh)
{
    *Bu = B + (size_t)pl->group[h] * N;
    *Cu = C + (size_t)pl->group[h] * N;
    *sh = s + (size_t)h * P * N;
    if (pl->idx == NULL)
        return N;
    const int k = pl->i0[h + 1] - pl->i0[h];
    gather_slots(Bk, Ck, *Bu, *Cu, pl->idx + pl->i0[h], k);
    *Bu = Bk;
    *Cu = Ck;
    *sh = s + (size_t)pl->i0[h] * P;
    return k;
}

#if HAVE_X86
/* Hot path of sparse decode: as step_avx512, over each head's slots only (a multiple of 16
 * when padded, so every load is whole and rows start 64-byte aligned). */
T512 static void step_sparse_avx512(float *y, float *s, const float *x, const float *dt,
                                    const float *A, const float *D, const float *B,
                                    const float *C, const ym_ssd_dims *d, const ym_ssd_plan *pl,
                                    int h0, int h1, float *work)
{
    const int P = d->head_dim, N = d->d_state;
    float *Bk = work, *Ck = work + slots_max(N);
    for (int h = h0; h < h1; h++) {
        const float *Bu, *Cu;
        float *sh;
        const int k = head_operands(pl, h, B, C, s, P, N, Bk, Ck, &Bu, &Cu, &sh);
        head_step_avx512(y + (size_t)h * P, sh, x + (size_t)h * P, dt[h], A[h], D[h], Bu, Cu,
                         P, k);
    }
}
#endif

void ym_ssd_step_sparse_f32(float *y, float *s, const float *x, const float *dt, const float *A,
                            const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                            const ym_ssd_plan *pl, int h0, int h1, float *work)
{
    if (pl->idx == NULL) { /* every entry live: the dense step, one group's heads at a time */
        const ym_ssd_dims one = {pl->n_head, d->head_dim, 1, d->d_state};
        for (int g = 0; g < d->n_group; g++) {
            const int a = pl->gofs[g] > h0 ? pl->gofs[g] : h0;
            const int b = pl->gofs[g + 1] < h1 ? pl->gofs[g + 1] : h1;
            if (a < b)
                ym_ssd_step_f32(y, s, x, dt, A, D, B + (size_t)g * d->d_state,
                                C + (size_t)g * d->d_state, &one, a, b);
        }
        return;
    }
#if HAVE_X86
    if (have_avx512()) {
        step_sparse_avx512(y, s, x, dt, A, D, B, C, d, pl, h0, h1, work);
        return;
    }
#endif
    const int P = d->head_dim, N = d->d_state;
    float *Bk = work, *Ck = work + slots_max(N);
    for (int h = h0; h < h1; h++) {
        const float *Bu, *Cu;
        float *sh;
        const int k = head_operands(pl, h, B, C, s, P, N, Bk, Ck, &Bu, &Cu, &sh);
        head_step_ref(y + (size_t)h * P, sh, x + (size_t)h * P, dt[h], A[h], D[h], Bu, Cu, P, k);
    }
}

/* The chunk's own work for a head of up to slots_max(N) slots, then its gathered B and C. */
size_t ym_ssd_prefill_sparse_work(const ym_ssd_dims *d, int chunk)
{
    size_t Q = (size_t)(chunk > 0 ? chunk : 1), K = (size_t)slots_max(d->d_state);
    ym_ssd_dims pd = *d;
    pd.d_state = (int)K;
    return ym_ssd_prefill_work(&pd, chunk) + 2 * Q * K;
}

void ym_ssd_prefill_sparse_f32(float *y, int ldy, float *s, const float *x, int ldx,
                               const float *dt, int lddt, const float *B, const float *C,
                               int ldbc, const float *A, const float *D, int T,
                               const ym_ssd_dims *d, const ym_ssd_plan *pl, int chunk, int h0,
                               int h1, float *work)
{
    const int P = d->head_dim, N = d->d_state;
    if (chunk < 1)
        chunk = 1;
    ym_ssd_dims pd = *d;
    pd.d_state = slots_max(N);
    float *Bk = work + ym_ssd_prefill_work(&pd, chunk), *Ck = Bk + (size_t)chunk * pd.d_state;
    for (int c0 = 0; c0 < T; c0 += chunk) {
        const int Q = T - c0 < chunk ? T - c0 : chunk;
        const size_t r = (size_t)c0;
        for (int g = 0; g < d->n_group; g++) {
            const int a = pl->gofs[g] > h0 ? pl->gofs[g] : h0;
            const int b = pl->gofs[g + 1] < h1 ? pl->gofs[g + 1] : h1;
            const float *Bg = B + r * ldbc + (size_t)g * N, *Cg = C + r * ldbc + (size_t)g * N;
            if (a >= b)
                continue;
            if (pl->idx == NULL) { /* every entry live: the heads of a group share C_g B_g^T */
                chunk_group(y + r * ldy, ldy, s, x + r * ldx, ldx, dt + r * lddt, lddt, Bg, Cg,
                            ldbc, A, D, Q, d, a, b, work);
                continue;
            }
            /* Each head has its own live entries, so its own C B^T over them: gather its k
             * slots into [Q, k] (padding 0) and run the chunk as a one-head, one-group layer
             * of k entries. */
            for (int h = a; h < b; h++) {
                const int k = pl->i0[h + 1] - pl->i0[h];
                const int32_t *ix = pl->idx + pl->i0[h];
                float *Yh = y + r * ldy + (size_t)h * P;
                const float *Xh = x + r * ldx + (size_t)h * P;
                if (k == 0) { /* no state: y = D x */
                    for (int i = 0; i < Q; i++)
                        for (int p = 0; p < P; p++)
                            Yh[(size_t)i * ldy + p] = D[h] * Xh[(size_t)i * ldx + p];
                    continue;
                }
                for (int i = 0; i < Q; i++)
                    gather_slots(Bk + (size_t)i * k, Ck + (size_t)i * k, Bg + (size_t)i * ldbc,
                                 Cg + (size_t)i * ldbc, ix, k);
                const ym_ssd_dims one = {1, P, 1, k};
                chunk_group(Yh, ldy, s + (size_t)pl->i0[h] * P, Xh, ldx, dt + r * lddt + h, lddt,
                            Bk, Ck, k, A + h, D + h, Q, &one, 0, 1, work);
            }
        }
    }
}

void ym_gate_sumsq_sparse_f32(float *y, int ldy, const float *z, int ldz, int T,
                              const ym_ssd_plan *pl, int P, int n_group, int c0, int c1,
                              float *ss)
{
    for (int t = 0; t < T; t++) {
        float *yt = y + (size_t)t * ldy;
        const float *zt = z + (size_t)t * ldz;
        float *st = ss + (size_t)t * n_group;
        for (int g = 0; g < n_group; g++) {
            const int g0 = pl->gofs[g] * P, g1 = pl->gofs[g + 1] * P;
            const int a = c0 > g0 ? c0 : g0, b = c1 < g1 ? c1 : g1;
            st[g] = gate_sumsq(yt, zt, a, b);
        }
    }
}

void ym_group_scale_sparse_f32(float *out, int ldo, const float *v, int ldv, int T,
                               const float *ss, int n_parts, size_t part_stride, const float *w,
                               const ym_ssd_plan *pl, int P, int n_group, float eps)
{
    for (int t = 0; t < T; t++) {
        const float *vt = v + (size_t)t * ldv;
        float *ot = out + (size_t)t * ldo;
        for (int g = 0; g < n_group; g++) {
            float tot = 0.0f; /* the parts in their order: every caller gets the same bits */
            for (int i = 0; i < n_parts; i++)
                tot += ss[(size_t)i * part_stride + (size_t)t * n_group + g];
            /* the dropped heads' zeros still count in the mean: divide by the dense width */
            const float r = 1.0f / sqrtf(tot / (float)pl->group_width + eps);
            for (int c = pl->gofs[g] * P; c < pl->gofs[g + 1] * P; c++)
                ot[c] = vt[c] * r * w[c];
        }
    }
}

size_t ym_ssd_state_bytes(const ym_ssd_dims *d, int d_conv)
{
    size_t di = (size_t)d->n_head * (size_t)d->head_dim;
    size_t conv = (di + 2 * (size_t)d->n_group * (size_t)d->d_state) * (size_t)(d_conv - 1);
    return (conv + di * (size_t)d->d_state) * sizeof(float);
}
