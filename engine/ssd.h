/* engine/ssd.h - the Mamba-2 (SSD) layer's own math: dt, the decode step per head, the chunked
 * SSD prefill as matrix products, and the gated RMSNorm per group.
 *
 * Shapes (row-major, one sequence): H heads of P channels (d_inner = H*P), G groups of N state
 * entries; head h reads group g = h / (H/G). The state of one layer is s [H, P, N] in f32.
 * Every function works on a head (or row) range so that pool workers can split a layer; none
 * allocates, none keeps state between calls. The _ref versions are plain loops for the tests. */
#ifndef YM_ENGINE_SSD_H
#define YM_ENGINE_SSD_H

#include <stddef.h>
#include <stdint.h>

typedef struct ym_ssd_dims {
    int n_head;   /* H (num_heads)                         */
    int head_dim; /* P (head_dim); d_inner = H * P         */
    int n_group;  /* G (n_groups); divides H               */
    int d_state;  /* N (state_size)                        */
} ym_ssd_dims;

/* dt[t,h] := clamp(softplus(dt[t,h] + bias[h]), lo, hi) for h in [0, H)   dt [T, ld], bias [H]
 * (PyTorch's softplus: the input itself above 20; hi may be INFINITY). */
void ym_ssd_dt_f32(float *dt, int ld, int T, const float *bias, int n_head, float lo, float hi);

/* One token, heads [h0, h1):
 *   s[h,p,n] = exp(dt[h]*A[h]) * s[h,p,n] + dt[h] * x[h*P+p] * B[g*N+n]
 *   y[h*P+p] = sum_n s[h,p,n] * C[g*N+n] + D[h] * x[h*P+p]
 * y, x [H*P]; s [H, P, N] in/out; dt, A (= -exp(A_log)), D [H]; B, C [G*N]. y must not alias x. */
void ym_ssd_step_f32(float *y, float *s, const float *x, const float *dt, const float *A,
                     const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                     int h0, int h1);
void ym_ssd_step_ref(float *y, float *s, const float *x, const float *dt, const float *A,
                     const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                     int h0, int h1);

/* Floats of scratch ym_ssd_prefill_f32 needs per calling thread for chunk length Q. */
size_t ym_ssd_prefill_work(const ym_ssd_dims *d, int chunk);

/* T consecutive tokens of one sequence from state s (updated to the state after the last
 * token), heads [h0, h1), by the chunked SSD algorithm with chunks of `chunk` tokens (the last
 * one shorter). Equals T calls of ym_ssd_step_f32 up to float rounding.
 *   y [T, ldy] (columns h*P.., written), x [T, ldx], dt [T, lddt] (after ym_ssd_dt_f32),
 *   B and C [T, ldbc] (columns g*N..), A, D [H], s [H, P, N], work: ym_ssd_prefill_work floats.
 * y must not alias x, B, C or dt. Uses OpenBLAS sgemm (single-threaded from the caller). */
void ym_ssd_prefill_f32(float *y, int ldy, float *s, const float *x, int ldx, const float *dt,
                        int lddt, const float *B, const float *C, int ldbc, const float *A,
                        const float *D, int T, const ym_ssd_dims *d, int chunk, int h0, int h1,
                        float *work);
/* The same result token by token with ym_ssd_step_ref (the tests' reference). */
void ym_ssd_prefill_ref(float *y, int ldy, float *s, const float *x, int ldx, const float *dt,
                        int lddt, const float *B, const float *C, int ldbc, const float *A,
                        const float *D, int T, const ym_ssd_dims *d, int h0, int h1);

/* Gated RMSNorm per group (mamba_ssm's RMSNormGated, norm after the gate), rows t in [0, T):
 *   v = y[t] * silu(z[t]);  out[t, c] = v[c] / sqrt(mean_{c' in group(c)} v[c']^2 + eps) * w[c]
 * with groups of d_inner / n_group consecutive channels (n_group 1: the whole width, as
 * transformers' MambaRMSNormGated). out [T, ldo], y [T, ldy], z [T, ldz], w [d_inner].
 * out may alias y (same ld). */
void ym_gated_rmsnorm_f32(float *out, int ldo, const float *y, int ldy, const float *z, int ldz,
                          int T, const float *w, int d_inner, int n_group, float eps);
void ym_gated_rmsnorm_ref(float *out, int ldo, const float *y, int ldy, const float *z, int ldz,
                          int T, const float *w, int d_inner, int n_group, float eps);

/* The same gated norm in two halves, for a layer whose threads own channel ranges (heads):
 * 1. ym_gate_sumsq_f32, on channels [c0, c1) of rows t < T (y [T, ldy], z [T, ldz]):
 *      y[t, c] := y[t, c] * silu(z[t, c]);   ss[t*n_group + g] = sum of y[t, c]^2 over those
 *      channels of group g (0 for a group the range does not touch);   ss [T, n_group]
 * 2. ym_group_scale_f32, once every range's sums exist (n_parts arrays [T, n_group], part_stride
 *    floats apart, added in that order), on all channels:
 *      out[t, c] = v[t, c] / sqrt(sum of the parts' ss[t, g(c)] / (d_inner/n_group) + eps) * w[c]
 *    out [T, ldo] must not alias v [T, ldv]. */
void ym_gate_sumsq_f32(float *y, int ldy, const float *z, int ldz, int T, int d_inner,
                       int n_group, int c0, int c1, float *ss);
void ym_group_scale_f32(float *out, int ldo, const float *v, int ldv, int T, const float *ss,
                        int n_parts, size_t part_stride, const float *w, int d_inner,
                        int n_group, float eps);

/* ---- a served sparse layer (engine/sparse.h, a Mamba-2 head profile) ------------------------
 * Its kept heads are served in their original order: served head h is original head head[h] of
 * group group[h], its channels are h*P .. h*P+P-1 of the layer's served d_inner = n_head*P, and
 * the served heads of group g are [gofs[g], gofs[g+1]) (maybe empty). Each served head has the
 * k = i0[h+1] - i0[h] slots idx[i0[h] .. i0[h+1]): its live state entries (ascending), then
 * -1 up to a multiple of 16 where that stays within N (padding: a slot that reads B = C = 0,
 * so its state stays 0; full SIMD widths and 64-byte aligned rows cost less than the few lanes
 * saved). Its state is stored
 * compactly: s[i0[h]*P + p*k + j] is S[h, p, idx[i0[h]+j]]; the dropped entries are held at 0,
 * so they are simply not stored. idx NULL: every entry is live and the state is [n_head, P, N]
 * as in a dense layer.
 * Semantics (the masks of the toolkit's Mamba-2): a dropped head computes nothing (its y, the D
 * skip included, is 0: it leaves the served layout); a dropped entry n of head h has S[h,:,n]
 * at 0 (B[n] and C[n] do not reach that head); the gated norm still divides each group's sum of
 * squares by the dense group width. The functions below take dims d of the dense layer (P, G,
 * N) and the plan; [h0, h1) are served heads. */
typedef struct ym_ssd_plan {
    int n_head;            /* heads served (kept)                                    */
    const int32_t *head;   /* [n_head] original head of each served head             */
    const int32_t *group;  /* [n_head] its group                                     */
    const int32_t *gofs;   /* [n_group + 1] served heads of group g: [gofs[g], gofs[g+1]) */
    int group_width;       /* channels per group of the dense layer (d_inner / G)    */
    const int32_t *i0;     /* [n_head + 1] slots of served head h: [i0[h], i0[h+1])  */
    const int32_t *idx;    /* [i0[n_head]] state entry n of each slot (-1: padding),
                              or NULL: all live                                      */
    int64_t n_state;       /* floats of the layer's SSM state (n_head*P*N when idx is NULL) */
} ym_ssd_plan;

/* The decode step (ym_ssd_step_f32's formulas) for served heads [h0, h1) under the plan; work:
 * 2 * (N rounded up to 16) floats of the caller's scratch (a head's slots of B and C). */
void ym_ssd_step_sparse_f32(float *y, float *s, const float *x, const float *dt, const float *A,
                            const float *D, const float *B, const float *C, const ym_ssd_dims *d,
                            const ym_ssd_plan *pl, int h0, int h1, float *work);
/* The chunked prefill (ym_ssd_prefill_f32's arguments) for served heads [h0, h1) under the
 * plan; work: ym_ssd_prefill_sparse_work floats. x, y: served channels; dt, A, D: served heads;
 * B, C: [T, ldbc] of all G*N entries as in the dense layer. */
size_t ym_ssd_prefill_sparse_work(const ym_ssd_dims *d, int chunk);
void ym_ssd_prefill_sparse_f32(float *y, int ldy, float *s, const float *x, int ldx,
                               const float *dt, int lddt, const float *B, const float *C,
                               int ldbc, const float *A, const float *D, int T,
                               const ym_ssd_dims *d, const ym_ssd_plan *pl, int chunk, int h0,
                               int h1, float *work);
/* The gated norm's two halves (ym_gate_sumsq_f32, ym_group_scale_f32) on a served layer of
 * n_head*P channels: groups are the plan's served head ranges, and the divisor of each group's
 * sum of squares is the dense group_width. c0, c1: served channels; w [n_head*P] served. */
void ym_gate_sumsq_sparse_f32(float *y, int ldy, const float *z, int ldz, int T,
                              const ym_ssd_plan *pl, int P, int n_group, int c0, int c1,
                              float *ss);
void ym_group_scale_sparse_f32(float *out, int ldo, const float *v, int ldv, int T,
                               const float *ss, int n_parts, size_t part_stride, const float *w,
                               const ym_ssd_plan *pl, int P, int n_group, float eps);

/* Bytes of one sequence's Mamba-2 state for one layer: conv state over x|B|C
 * ((d_inner + 2*G*N) * (d_conv - 1)) plus the SSM state (H*P*N), in f32. */
size_t ym_ssd_state_bytes(const ym_ssd_dims *d, int d_conv);

#endif
