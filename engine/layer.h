/* engine/layer.h - the layer interface: what a model family's layer (engine/mamba1.c,
 * engine/mamba2.c) sees of a forward context, and the one table of operations it provides.
 * Private to the engine's forward pass (forward.c and the family files); not a public header.
 *
 * forward.c owns the context, the ragged batch, the embedding and the head; it selects the
 * family's operations once, at context creation (ym_layer_ops_for), and calls ops->layer for
 * every layer. A layer adds its mixer's output to the residual stream h for every row. */
#ifndef YM_ENGINE_LAYER_H
#define YM_ENGINE_LAYER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/sparse.h"
#include "engine/weight.h"

#define ALIGN_CH 16 /* channel slices start on a 64-byte boundary */
/* Adapters: LoRA ranks up to this split their down-projection (x . At) over the threads that
 * own the input (x_proj, dt_proj, out_proj), so no thread reads all of At; larger ranks have
 * every thread compute the whole product for its columns. */
#define UP_MAX 64

typedef struct ym_layer_ops ym_layer_ops;

struct ym_ctx {
    ym_model_t *model; /* owned reference */
    ym_pool_t *pool;   /* owned */
    const ym_layer_ops *ops; /* the model family's layer (static) */
    int n_rows_max;
    int n_threads;
    float *wscratch; /* per-thread [n_threads][ym_matmul_scratch(K max)]: weight tiles widened
                        for sgemm (many-row products of bf16/int8 weights), or NULL */
    size_t wscratch_n;
    /* scratch, [n_rows_max, ...] row-major; every family has h, hn, ob and out_rows, the
     * Mamba-1 layer's buffers (x .. up) exist only when ops->mamba1_scratch, else NULL */
    float *h;   /* residual stream [R, d_model] */
    float *hn;  /* per-thread normed input [n_threads][R, d_model] */
    float *x;   /* conv input/output [R, d_inner] */
    float *z;   /* gate [R, d_inner] */
    float *dbc; /* x_proj output [R, dt_rank + 2*d_state] */
    float *dt;  /* [R, d_inner] */
    float *y;   /* scan output [R, d_inner] */
    float *xs;  /* adapters: x_proj input with IA³ input scaling [R, d_inner] */
    float *ob;  /* adapters: out_proj output before IA³ output scaling [R, d_model] */
    float *up;  /* adapters: per-thread partial LoRA down-products [n_threads][3][R][UP_MAX] */
    int *out_rows; /* [R] rows whose logits are wanted */
    /* per-thread slices */
    int *ch0, *ch1;   /* [n_layer][n_threads] served channels of each layer (own d_inner) */
    int *md0, *md1;   /* d_model rows of out_proj */
    int *p0, *p1;     /* x_proj output rows */
    int *v0, *v1;     /* vocab rows */
    /* family scratch (ops->ctx_init allocates, ym_ctx_free frees), NULL when unused */
    float *fam;       /* one block of floats, laid out by the family */
    int *fam_slices;  /* per-thread slices the family needs */
    /* the run in progress */
    const ym_batch *batch;
    float *logits;
    int n_rows;
    int n_out;
};

struct ym_layer_ops {
    const char *name;
    /* The scratch a family needs, as ym_ctx_new allocates it: the shared per-row buffers of
     * the Mamba-1 layer (x, z, dbc, dt, y, xs, up) when mamba1_scratch, and the family's own
     * block from ctx_init (into c->fam / c->fam_slices, once), or NULL: none. A family pays
     * for no other family's buffers. */
    bool mamba1_scratch;
    ym_err (*ctx_init)(ym_ctx_t *c);
    /* Layer l for all rows of c->batch: h += mixer(norm(h)). Every thread of the pool runs it;
     * hn is the thread's own [R, d_model] buffer, wscr its matmul scratch (or NULL). */
    void (*layer)(ym_ctx_t *c, int ith, int nth, int l, float *hn, float *wscr);
    /* The plain reference for one token (ym_forward_ref), or NULL: none for this family. */
    void (*ref_token)(const ym_model_t *m, const ym_sparsity *sp, ym_state_t *st, int32_t tok,
                      float *logits);
    bool adapters; /* runs ym_batch.adapters */
};

extern const ym_layer_ops ym_mamba1_layer_ops;
extern const ym_layer_ops ym_mamba2_layer_ops;
extern const ym_layer_ops ym_falcon_mamba_layer_ops;

/* C[M, n1 - n0] = A[M, K] . W[n0:n1, K]^T + beta * C (engine/weight.h), with this thread's
 * scratch for tiles of a low-bit weight. */
#define MATMUL(C, ldc, A, lda, M, W, n0, n1, beta)                                             \
    ym_matmul((C), (ldc), (A), (lda), (M), (W), (n0), (n1), (beta), wscr)

/* Slice i of nth contiguous slices of [0, n) of near-equal size, each starting on a multiple
 * of align: [*lo, *hi). */
static inline void ym__slice(int n, int nth, int align, int i, int *lo, int *hi)
{
    int units = (n + align - 1) / align;
    int u0 = (int)((long)units * i / nth), u1 = (int)((long)units * (i + 1) / nth);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

/* Every slice of ym__slice: [lo[i], hi[i]) for i in [0, nth). */
static inline void ym__split(int n, int nth, int align, int *lo, int *hi)
{
    for (int i = 0; i < nth; i++)
        ym__slice(n, nth, align, i, lo + i, hi + i);
}

static inline void add_bias(float *C, int ldc, int M, const float *b, int n0, int n1)
{
    for (int r = 0; r < M; r++)
        for (int j = n0; j < n1; j++)
            C[(size_t)r * ldc + j] += b[j];
}

static inline void norm_rows(float *out, const float *h, const float *w, int d, float eps,
                             const int *rows, int n_rows)
{
    for (int i = 0; i < n_rows; i++) {
        int r = rows != NULL ? rows[i] : i;
        ym_rmsnorm_f32(out + (size_t)i * d, h + (size_t)r * d, w, d, eps);
    }
}

#endif
