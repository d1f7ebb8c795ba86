/* engine/adapt.c - the unmerged adapter kernels of the forward pass (engine/adapt.h). Hot path.
 *
 * Runs on the engine thread and its pool workers, each on its own output columns; nothing here
 * allocates. The LoRA product goes through the rank in chunks of 16, so the partial products
 * u = At^T x live in registers and no scratch is needed: per row and chunk, one pass over x
 * and At (rank lanes contiguous: At is [n_in, r]) and one pass over the row's output columns.
 * The loops are plain C; an AVX-512 copy of the same body is compiled with a target attribute
 * and chosen at run time (no -march for the whole build, as engine/kernels.c). */
#include "engine/adapt.h"

#include <stddef.h>

/* Mamba-2 has in_proj [z|xBC|dt] and out_proj only: x_proj and dt_proj are 0 x 0. */
int ym_proj_n_in(const ym_config *cfg, ym_proj p)
{
    if (cfg->arch == YM_ARCH_MAMBA2)
        return p == YM_PROJ_IN ? cfg->d_model : p == YM_PROJ_OUT ? cfg->d_inner : 0;
    switch (p) {
    case YM_PROJ_IN:
        return cfg->d_model;
    case YM_PROJ_X:
        return cfg->d_inner;
    case YM_PROJ_DT:
        return cfg->dt_rank;
    case YM_PROJ_OUT:
        return cfg->d_inner;
    default:
        return 0;
    }
}

int ym_proj_n_out(const ym_config *cfg, ym_proj p)
{
    if (cfg->arch == YM_ARCH_MAMBA2)
        return p == YM_PROJ_IN ? cfg->d_inner + ym_config_conv_channels(cfg) + cfg->n_head
               : p == YM_PROJ_OUT ? cfg->d_model
                                  : 0;
    switch (p) {
    case YM_PROJ_IN:
        return 2 * cfg->d_inner;
    case YM_PROJ_X:
        return cfg->dt_rank + 2 * cfg->d_state;
    case YM_PROJ_DT:
        return cfg->d_inner;
    case YM_PROJ_OUT:
        return cfg->d_model;
    default:
        return 0;
    }
}

const char *ym_proj_name(ym_proj p)
{
    static const char *const names[YM_PROJ_N] = {"in_proj", "x_proj", "dt_proj", "out_proj"};
    return (int)p >= 0 && p < YM_PROJ_N ? names[p] : "?";
}

int ym_adapt_fits(const ym_adapt *a, const ym_config *cfg)
{
    return a != NULL && a->proj != NULL && a->n_layer == cfg->n_layer &&
           a->d_model == cfg->d_model && a->d_inner == cfg->d_inner &&
           a->d_state == cfg->d_state && a->dt_rank == cfg->dt_rank;
}

/* u[j] = sum_{k0 <= k < k1} At[k*r + j0 + j] * x[k] for j < NJ; the j loop is what
 * vectorizes. Four partial sums over k break the chain of dependent FMAs (the loop is latency
 * bound else). */
#define LORA_U(NJ)                                                                                 \
    do {                                                                                           \
        float u1[16] = {0}, u2[16] = {0}, u3[16] = {0};                                            \
        int k = k0;                                                                                \
        for (; k + 4 <= k1; k += 4) {                                                              \
            const float *a = At + (size_t)k * r + j0;                                              \
            for (int j = 0; j < (NJ); j++) {                                                       \
                u[j] += a[j] * xr[k];                                                              \
                u1[j] += a[r + j] * xr[k + 1];                                                     \
                u2[j] += a[2 * r + j] * xr[k + 2];                                                 \
                u3[j] += a[3 * r + j] * xr[k + 3];                                                 \
            }                                                                                      \
        }                                                                                          \
        for (; k < k1; k++)                                                                        \
            for (int j = 0; j < (NJ); j++)                                                         \
                u[j] += At[(size_t)k * r + j0 + j] * xr[k];                                        \
        for (int j = 0; j < (NJ); j++)                                                             \
            u[j] += (u1[j] + u2[j]) + u3[j];                                                       \
    } while (0)

/* y[n] += sum_j u[j] * Bt[j0 + j, n]: one pass over the row's columns, the ranks unrolled. */
#define LORA_Y(NJ)                                                                                 \
    do {                                                                                           \
        const float *b = Bt + (size_t)j0 * ldb;                                                    \
        for (int n = n0; n < n1; n++) {                                                            \
            float acc = yr[n];                                                                     \
            for (int j = 0; j < (NJ); j++)                                                         \
                acc += u[j] * b[(size_t)j * ldb + n];                                              \
            yr[n] = acc;                                                                           \
        }                                                                                          \
    } while (0)

/* Dispatch on the chunk's width: 16 and 8 (the common ranks) get fixed-width loops. */
#define BY_WIDTH(M)                                                                                \
    do {                                                                                           \
        if (nj == 16)                                                                              \
            M(16);                                                                                 \
        else if (nj == 8)                                                                          \
            M(8);                                                                                  \
        else                                                                                       \
            M(nj);                                                                                 \
    } while (0)

static inline __attribute__((always_inline)) void
down_body(float *uo, int ldu, const float *x, int ldx, int T, const float *At, int r, int k0,
          int k1)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * ldx;
        for (int j0 = 0; j0 < r; j0 += 16) {
            int nj = r - j0 < 16 ? r - j0 : 16;
            float u[16] = {0};
            BY_WIDTH(LORA_U);
            for (int j = 0; j < nj; j++)
                uo[(size_t)t * ldu + j0 + j] = u[j];
        }
    }
}

static inline __attribute__((always_inline)) void
up_body(float *y, int ldy, const float *ui, int ldu, int T, const float *Bt, int r, int ldb,
        int n0, int n1)
{
    for (int t = 0; t < T; t++) {
        float *yr = y + (size_t)t * ldy;
        for (int j0 = 0; j0 < r; j0 += 16) {
            int nj = r - j0 < 16 ? r - j0 : 16;
            float u[16];
            for (int j = 0; j < nj; j++)
                u[j] = ui[(size_t)t * ldu + j0 + j];
            BY_WIDTH(LORA_Y);
        }
    }
}

static inline __attribute__((always_inline)) void
lora_body(float *y, int ldy, const float *x, int ldx, int T, const float *At, int r, int n_in,
          const float *Bt, int ldb, int n0, int n1)
{
    const int k0 = 0, k1 = n_in;
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * ldx;
        float *yr = y + (size_t)t * ldy;
        for (int j0 = 0; j0 < r; j0 += 16) {
            int nj = r - j0 < 16 ? r - j0 : 16;
            float u[16] = {0};
            BY_WIDTH(LORA_U);
            BY_WIDTH(LORA_Y);
        }
    }
}

static inline __attribute__((always_inline)) void scale_body(float *y, int ldy, int T,
                                                             const float *g, int n0, int n1)
{
    for (int t = 0; t < T; t++) {
        float *yr = y + (size_t)t * ldy;
        for (int n = n0; n < n1; n++)
            yr[n] *= g[n];
    }
}

#if defined(__x86_64__)
#define T512 __attribute__((target("avx512f,avx512dq,fma")))
T512 static void lora_avx512(float *y, int ldy, const float *x, int ldx, int T, const float *At,
                             int r, int n_in, const float *Bt, int ldb, int n0, int n1)
{
    lora_body(y, ldy, x, ldx, T, At, r, n_in, Bt, ldb, n0, n1);
}

T512 static void down_avx512(float *u, int ldu, const float *x, int ldx, int T, const float *At,
                             int r, int k0, int k1)
{
    down_body(u, ldu, x, ldx, T, At, r, k0, k1);
}

T512 static void up_avx512(float *y, int ldy, const float *u, int ldu, int T, const float *Bt,
                           int r, int ldb, int n0, int n1)
{
    up_body(y, ldy, u, ldu, T, Bt, r, ldb, n0, n1);
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

void ym_lora_rows_f32(float *y, int ldy, const float *x, int ldx, int T, const float *At, int r,
                      int n_in, const float *Bt, int ldb, int n0, int n1)
{
    if (T <= 0 || r <= 0 || n1 <= n0)
        return;
#if defined(__x86_64__)
    if (have_avx512()) {
        lora_avx512(y, ldy, x, ldx, T, At, r, n_in, Bt, ldb, n0, n1);
        return;
    }
#endif
    lora_body(y, ldy, x, ldx, T, At, r, n_in, Bt, ldb, n0, n1);
}

void ym_lora_down_f32(float *u, int ldu, const float *x, int ldx, int T, const float *At, int r,
                      int k0, int k1)
{
    if (T <= 0 || r <= 0)
        return;
#if defined(__x86_64__)
    if (have_avx512()) {
        down_avx512(u, ldu, x, ldx, T, At, r, k0, k1);
        return;
    }
#endif
    down_body(u, ldu, x, ldx, T, At, r, k0, k1);
}

void ym_lora_up_f32(float *y, int ldy, const float *u, int ldu, int T, const float *Bt, int r,
                    int ldb, int n0, int n1)
{
    if (T <= 0 || r <= 0 || n1 <= n0)
        return;
#if defined(__x86_64__)
    if (have_avx512()) {
        up_avx512(y, ldy, u, ldu, T, Bt, r, ldb, n0, n1);
        return;
    }
#endif
    up_body(y, ldy, u, ldu, T, Bt, r, ldb, n0, n1);
}

void ym_scale_rows_f32(float *y, int ldy, int T, const float *g, int n0, int n1)
{
    scale_body(y, ldy, T, g, n0, n1);
}

void ym_scale_copy_rows_f32(float *dst, const float *src, int ld, int T, const float *g, int n0,
                            int n1)
{
    for (int t = 0; t < T; t++) {
        const float *s = src + (size_t)t * ld;
        float *d = dst + (size_t)t * ld;
        for (int n = n0; n < n1; n++)
            d[n] = g[n] * s[n];
    }
}
