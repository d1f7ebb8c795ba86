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

int ym_proj_n_in(const ym_config *cfg, ym_proj p)
{
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

/* u[j] = sum_k At[k*r + j0 + j] * x[k] for j < NJ; the j loop is what vectorizes. */
#define LORA_U(NJ)                                                                                 \
    do {                                                                                           \
        for (int k = 0; k < n_in; k++) {                                                           \
            const float *a = At + (size_t)k * r + j0;                                              \
            float xv = xr[k];                                                                      \
            for (int j = 0; j < (NJ); j++)                                                         \
                u[j] += a[j] * xv;                                                                 \
        }                                                                                          \
    } while (0)

static inline __attribute__((always_inline)) void
lora_body(float *y, int ldy, const float *x, int ldx, int T, const float *At, int r, int n_in,
          const float *Bt, int ldb, int n0, int n1)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * ldx;
        float *yr = y + (size_t)t * ldy;
        for (int j0 = 0; j0 < r; j0 += 16) {
            int nj = r - j0 < 16 ? r - j0 : 16;
            float u[16] = {0};
            if (nj == 16)
                LORA_U(16);
            else if (nj == 8)
                LORA_U(8);
            else
                LORA_U(nj);
            /* y[n] += sum_j u[j] * Bt[j0 + j, n], one axpy per rank over this row's columns */
            for (int j = 0; j < nj; j++) {
                const float *b = Bt + (size_t)(j0 + j) * ldb;
                float uj = u[j];
                for (int n = n0; n < n1; n++)
                    yr[n] += uj * b[n];
            }
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
