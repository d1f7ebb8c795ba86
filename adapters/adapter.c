/* adapters/adapter.c - load PEFT adapters and adapter sets, compose them, compile them for the
 * engine's unmerged forward (engine/adapt.h).
 *
 * A leaf adapter is one PEFT directory. Its tensors are read through the engine's strict
 * safetensors parser (sizes, offsets and dtypes are checked there), converted to f32, checked
 * for NaN/Inf and matched one by one against what adapter_config.json targets: every expected
 * tensor must be present with the shape the base model implies, and nothing else may be.
 * Every ym_adapter_t is compiled into one ym_adapt: per layer and projection, the lora_A of
 * every LoRA transposed side by side (At [n_in, sum r]), scale * lora_B transposed
 * (Bt [sum r, n_out]) and the products of the IA³ vectors - one arena, 64-byte aligned. A leaf
 * then frees the tensors it read and keeps only that; an adapter set or a composition holds
 * references to its parts and is compiled from their compiled forms, in order.
 * Thread: loading runs on any thread (the server's worker pool); a finished ym_adapter_t is
 * immutable, shared read-only by every thread, freed by the last ym_adapter_unref (atomic).
 * Must not: keep the safetensors mapping open (a replaced file must not change a live
 * adapter) or accept anything it would compute differently from PEFT. */
#include "adapters/adapter.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/fileio.h"
#include "engine/safetensors.h"
#include "engine/sparse.h"
#include "engine/ssd.h"

#define MAX_CONFIG_BYTES ((size_t)1 << 20)
#define DEFAULT_R_MAX 256
#define DEFAULT_MAX_BYTES ((size_t)1 << 30)
#define PREFIX "base_model.model.backbone.layers."

/* One projection of one layer of one PEFT adapter. */
typedef struct piece {
    int layer;
    ym_proj proj;
    ym_peft_type type;
    int r;        /* LoRA */
    float scale;  /* LoRA: alpha / r or alpha / sqrt(r) */
    float *A;     /* owned, LoRA [r, n_in] */
    float *B;     /* owned, LoRA [n_out, r] */
    float *g;     /* owned, IA³ [n_in] (ff) or [n_out] */
    bool ff;
} piece;

struct ym_adapter {
    atomic_int refcount;
    ym_model_t *model;     /* owned reference */
    const char *kind;      /* static */
    piece *pieces;         /* owned [n_pieces]; a leaf's tensors until compiled, then NULL */
    int n_pieces;
    int n_leaves;          /* PEFT adapters it is made of */
    ym_adapter_t **parts;  /* owned references [n_parts]; sets and compositions only */
    int n_parts;
    size_t n_params;
    /* compiled */
    ym_adapt applied;
    ym_adapt_proj *proj;   /* owned [n_layer * YM_PROJ_N] */
    float *arena;          /* owned, every compiled array */
    size_t arena_floats;
    int r_max;
    unsigned targets;
};

static void free_pieces(ym_adapter_t *a)
{
    for (int i = 0; i < a->n_pieces; i++) {
        free(a->pieces[i].A);
        free(a->pieces[i].B);
        free(a->pieces[i].g);
    }
    free(a->pieces);
    a->pieces = NULL;
    a->n_pieces = 0;
}

static void adapter_destroy(ym_adapter_t *a)
{
    if (a == NULL)
        return;
    free_pieces(a);
    for (int i = 0; i < a->n_parts; i++)
        ym_adapter_unref(a->parts[i]);
    free(a->parts);
    free(a->proj);
    free(a->arena);
    ym_model_unref(a->model);
    free(a);
}

ym_adapter_t *ym_adapter_ref(ym_adapter_t *a)
{
    if (a != NULL)
        atomic_fetch_add_explicit(&a->refcount, 1, memory_order_relaxed);
    return a;
}

void ym_adapter_unref(ym_adapter_t *a)
{
    if (a != NULL && atomic_fetch_sub_explicit(&a->refcount, 1, memory_order_acq_rel) == 1)
        adapter_destroy(a);
}

const ym_adapt *ym_adapter_applied(const ym_adapter_t *a)
{
    return a != NULL ? &a->applied : NULL;
}

/* ---- compile ------------------------------------------------------------------------------ */

static const float *module_bias(const ym_model_t *m, int l, ym_proj p)
{
    const ym_layer *L = &m->layers[l];
    switch (p) {
    case YM_PROJ_IN:
        return L->in_proj_b;
    case YM_PROJ_DT:
        return L->dt_proj_b;
    case YM_PROJ_OUT:
        return L->out_proj_b;
    default:
        return NULL;
    }
}

#define PAD16(n) (((size_t)(n) + 15) / 16 * 16) /* every array starts 64-byte aligned */

/* Module widths as the compiled form lays them out for layer l of m: the config's, except on a
 * Mamba-2 layer served under a head profile (engine/sparse.c), whose in_proj has only its
 * served rows [z | x | B C | dt] (kept heads) and out_proj only its kept heads' channels, packed
 * in that order; the forward strides its buffers by these widths (engine/mamba2.c). */
static void module_dims(const ym_model_t *m, int l, ym_proj pj, size_t *ni, size_t *no)
{
    const ym_layer *L = &m->layers[l];
    *ni = (size_t)ym_proj_n_in(&m->cfg, pj);
    *no = (size_t)ym_proj_n_out(&m->cfg, pj);
    if (L->ssd_plan != NULL && pj == YM_PROJ_IN)
        *no = (size_t)L->in_proj.n_rows;
    else if (L->ssd_plan != NULL && pj == YM_PROJ_OUT)
        *ni = (size_t)L->d_inner;
}

/* The dense index of served in_proj row i (kind 0) or served channel i (kind 1) of a Mamba-2
 * layer under a head profile: the layout engine/sparse.c gives it. */
static size_t m2_dense_index(const ym_model_t *m, int l, int kind, size_t i)
{
    const ym_config *c = &m->cfg;
    const ym_ssd_plan *pl = m->layers[l].ssd_plan;
    const size_t P = (size_t)c->head_dim, Di = (size_t)c->d_inner;
    const size_t GN = (size_t)c->n_group * (size_t)c->d_state, dk = (size_t)pl->n_head * P;
    if (kind == 1 || i < dk) /* a channel, or z */
        return (size_t)pl->head[i / P] * P + i % P;
    if (i < 2 * dk) /* x */
        return Di + (size_t)pl->head[(i - dk) / P] * P + (i - dk) % P;
    if (i < 2 * dk + 2 * GN) /* B, C */
        return 2 * Di + (i - 2 * dk);
    return 2 * Di + 2 * GN + (size_t)pl->head[i - 2 * dk - 2 * GN]; /* dt */
}

/* The dense index of what layer l of a served sparse model holds at served position i of a
 * module: kind 0 an output row of in_proj / dt_proj, kind 1 an input channel of x_proj /
 * out_proj; -1 past a Mamba-1 layer's kept channels. A Mamba-1 layer serves its channels in
 * scan order, only the kept ones (ym_layer.channel maps them to the original ones), at the
 * dense strides (positions from its n_kept on are never read); a Mamba-2 layer its kept heads'
 * rows and channels, packed (m2_dense_index). */
static long served_src(const ym_model_t *m, int l, int kind, size_t i)
{
    const ym_layer *L = &m->layers[l];
    if (L->ssd_plan != NULL)
        return (long)m2_dense_index(m, l, kind, i);
    const size_t di = (size_t)m->cfg.d_inner, h = kind == 0 ? i / di : 0;
    const size_t p = kind == 0 ? i % di : i;
    return p < (size_t)L->d_inner ? (long)(h * di + (size_t)L->channel[p]) : -1;
}

/* Every piece moved to the served sparse layout (served_src, module_dims): LoRA's rows of an
 * output and columns of an input over channels, IA³'s scales over them; a position with no
 * source is 0 in LoRA factors and 1 in IA³ scales. What PEFT trained on dropped channels or
 * heads has no effect on the pruned model (their x is 0, their outputs unused), so this is
 * exact. 0, or -1 on no memory. */
static int pieces_to_served(ym_adapter_t *a)
{
    for (int k = 0; k < a->n_pieces; k++) {
        piece *p = &a->pieces[k];
        const ym_model_t *m = a->model;
        const int l = p->layer;
        size_t ni, no, dni = (size_t)ym_proj_n_in(&m->cfg, p->proj);
        module_dims(m, l, p->proj, &ni, &no);
        int out_ch = p->proj == YM_PROJ_IN || p->proj == YM_PROJ_DT; /* n_out over channels */
        int in_ch = p->proj == YM_PROJ_X || p->proj == YM_PROJ_OUT;  /* n_in over channels */
        const size_t r = (size_t)p->r;
        float *t = NULL;
        if (p->type == YM_PEFT_LORA && out_ch) { /* B [no, r]: its rows */
            if ((t = malloc(sizeof(float) * no * r)) == NULL)
                return -1;
            for (size_t o = 0; o < no; o++) {
                long src = served_src(m, l, 0, o);
                for (size_t j = 0; j < r; j++)
                    t[o * r + j] = src < 0 ? 0.0f : p->B[(size_t)src * r + j];
            }
            free(p->B);
            p->B = t;
        } else if (p->type == YM_PEFT_LORA && in_ch) { /* A [r, ni]: its columns */
            if ((t = malloc(sizeof(float) * ni * r)) == NULL)
                return -1;
            for (size_t q = 0; q < ni; q++) {
                long src = served_src(m, l, 1, q);
                for (size_t j = 0; j < r; j++)
                    t[j * ni + q] = src < 0 ? 0.0f : p->A[j * dni + (size_t)src];
            }
            free(p->A);
            p->A = t;
        } else if (p->type == YM_PEFT_IA3 && ((p->ff && in_ch) || (!p->ff && out_ch))) {
            size_t n = p->ff ? ni : no;
            if ((t = malloc(sizeof(float) * n)) == NULL)
                return -1;
            for (size_t x = 0; x < n; x++) {
                long src = served_src(m, l, p->ff ? 1 : 0, x);
                t[x] = src < 0 ? 1.0f : p->g[src];
            }
            free(p->g);
            p->g = t;
        }
    }
    return 0;
}

/* The module's bias at output o of the compiled (dense-strided) layout, or 0: a sparse layer
 * stores in_proj's bias as [x half of n_kept, z half of n_kept] and dt_proj's as [n_kept]. */
static float bias_at(const ym_model_t *m, int l, ym_proj pj, const float *bias, size_t o)
{
    const ym_layer *L = &m->layers[l];
    if (L->channel == NULL || pj == YM_PROJ_OUT)
        return bias[o];
    size_t di = (size_t)m->cfg.d_inner, half = o / di, p = o % di;
    return p < (size_t)L->d_inner ? bias[half * (size_t)L->d_inner + p] : 0.0f;
}

/* Builds a->applied: a leaf from its pieces (then freed: the compiled form is all it keeps),
 * a set or composition from its parts' compiled forms, in order (ranks side by side, scales
 * multiplied; the scale of each LoRA is already inside its Bt). */
static ym_err compile(ym_adapter_t *a, ym_diag *diag)
{
    const ym_config *cfg = &a->model->cfg;
    const int n_mod = cfg->n_layer * YM_PROJ_N;
    int *rank = calloc((size_t)n_mod, sizeof(int)), *fill = calloc((size_t)n_mod, sizeof(int));
    unsigned char *gin = calloc((size_t)n_mod, 1), *gout = calloc((size_t)n_mod, 1);
    ym_err err = YM_ENOMEM;
    if (rank == NULL || fill == NULL || gin == NULL || gout == NULL)
        goto done;
    if (ym_model_is_sparse(a->model) && pieces_to_served(a) != 0)
        goto done;
    /* sizes: per module, total rank and which scales exist */
    for (int k = 0; k < a->n_pieces; k++) {
        const piece *p = &a->pieces[k];
        int m = p->layer * YM_PROJ_N + p->proj;
        if (p->type == YM_PEFT_LORA)
            rank[m] += p->r;
        else if (p->ff)
            gin[m] = 1;
        else
            gout[m] = 1;
    }
    for (int i = 0; i < a->n_parts; i++)
        for (int m = 0; m < n_mod; m++) {
            const ym_adapt_proj *q = &a->parts[i]->proj[m];
            rank[m] += q->r;
            gin[m] |= q->g_in != NULL;
            gout[m] |= q->g_out != NULL;
        }
    size_t total = 0;
    for (int m = 0; m < n_mod; m++) {
        size_t ni, no;
        module_dims(a->model, m / YM_PROJ_N, (ym_proj)(m % YM_PROJ_N), &ni, &no);
        total += PAD16((size_t)rank[m] * ni) + PAD16((size_t)rank[m] * no);
        total += gin[m] ? PAD16(ni) : 0;
        total += gout[m] ? 2 * PAD16(no) : 0; /* g_out and b_out */
    }
    a->proj = calloc((size_t)n_mod, sizeof(ym_adapt_proj));
    a->arena = aligned_alloc(64, (total > 0 ? total : 16) * sizeof(float));
    if (a->proj == NULL || a->arena == NULL)
        goto done;
    a->arena_floats = total;
    float *next = a->arena;
    for (int m = 0; m < n_mod; m++) {
        ym_proj pj = (ym_proj)(m % YM_PROJ_N);
        size_t ni, no;
        module_dims(a->model, m / YM_PROJ_N, pj, &ni, &no);
        ym_adapt_proj *P = &a->proj[m];
        P->r = rank[m];
        if (rank[m] > 0) {
            P->At = next;
            next += PAD16((size_t)rank[m] * ni);
            P->Bt = next;
            next += PAD16((size_t)rank[m] * no);
            a->targets |= 1u << pj;
            if (rank[m] > a->r_max)
                a->r_max = rank[m];
        }
        if (gin[m]) {
            float *g = next;
            next += PAD16(ni);
            for (size_t i = 0; i < ni; i++)
                g[i] = 1.0f;
            P->g_in = g;
            a->targets |= 1u << pj;
        }
        if (gout[m]) {
            float *g = next;
            next += PAD16(no);
            for (size_t i = 0; i < no; i++)
                g[i] = 1.0f;
            P->g_out = g;
            a->targets |= 1u << pj;
        }
    }
    /* a leaf's pieces */
    for (int k = 0; k < a->n_pieces; k++) {
        const piece *p = &a->pieces[k];
        int m = p->layer * YM_PROJ_N + p->proj;
        size_t ni, no;
        module_dims(a->model, p->layer, p->proj, &ni, &no);
        ym_adapt_proj *P = &a->proj[m];
        if (p->type == YM_PEFT_LORA) {
            int R = rank[m], j0 = fill[m];
            float *At = (float *)P->At, *Bt = (float *)P->Bt;
            for (int j = 0; j < p->r; j++) {
                for (size_t x = 0; x < ni; x++)              /* At[x, j0 + j] = A[j, x] */
                    At[x * R + j0 + j] = p->A[(size_t)j * ni + x];
                for (size_t o = 0; o < no; o++)              /* Bt[j0 + j, o] = s B[o, j] */
                    Bt[(size_t)(j0 + j) * no + o] = p->scale * p->B[o * p->r + j];
            }
            fill[m] += p->r;
        } else {
            float *g = (float *)(p->ff ? P->g_in : P->g_out);
            size_t n = p->ff ? ni : no;
            for (size_t x = 0; x < n; x++)
                g[x] *= p->g[x];
        }
    }
    /* the parts' compiled forms */
    for (int i = 0; i < a->n_parts; i++)
        for (int m = 0; m < n_mod; m++) {
            const ym_adapt_proj *q = &a->parts[i]->proj[m];
            size_t ni, no;
            module_dims(a->model, m / YM_PROJ_N, (ym_proj)(m % YM_PROJ_N), &ni, &no);
            ym_adapt_proj *P = &a->proj[m];
            if (q->r > 0) {
                int R = rank[m], j0 = fill[m];
                float *At = (float *)P->At, *Bt = (float *)P->Bt;
                for (size_t x = 0; x < ni; x++)
                    memcpy(At + x * R + j0, q->At + x * q->r, sizeof(float) * (size_t)q->r);
                memcpy(Bt + (size_t)j0 * no, q->Bt, sizeof(float) * (size_t)q->r * no);
                fill[m] += q->r;
            }
            for (size_t x = 0; q->g_in != NULL && x < ni; x++)
                ((float *)P->g_in)[x] *= q->g_in[x];
            for (size_t x = 0; q->g_out != NULL && x < no; x++)
                ((float *)P->g_out)[x] *= q->g_out[x];
        }
    /* g_out ⊙ bias, for the forward's fused bias + softplus of dt_proj (and any biased module) */
    for (int m = 0; m < n_mod; m++) {
        ym_proj pj = (ym_proj)(m % YM_PROJ_N);
        const float *bias = module_bias(a->model, m / YM_PROJ_N, pj);
        ym_adapt_proj *P = &a->proj[m];
        if (P->g_out != NULL && bias != NULL) {
            size_t ni, no;
            module_dims(a->model, m / YM_PROJ_N, pj, &ni, &no);
            float *b = next;
            next += PAD16(no);
            for (size_t o = 0; o < no; o++)
                b[o] = P->g_out[o] * bias_at(a->model, m / YM_PROJ_N, pj, bias, o);
            P->b_out = b;
        }
    }
    YM_ASSERT(next <= a->arena + (total > 0 ? total : 16));
    a->applied.n_layer = cfg->n_layer;
    a->applied.d_model = cfg->d_model;
    a->applied.d_inner = cfg->d_inner;
    a->applied.d_state = cfg->d_state;
    a->applied.dt_rank = cfg->dt_rank;
    a->applied.layout = ym_model_is_sparse(a->model) ? (const void *)a->model : NULL;
    a->applied.proj = a->proj;
    a->n_leaves = a->n_parts == 0 ? 1 : 0;
    for (int i = 0; i < a->n_parts; i++)
        a->n_leaves += a->parts[i]->n_leaves;
    free_pieces(a);
    err = YM_OK;
done:
    if (err != YM_OK)
        ym_diag_set(diag, err, "out of memory compiling the adapter");
    free(rank);
    free(fill);
    free(gin);
    free(gout);
    return err;
}

/* ---- leaf: one PEFT directory ------------------------------------------------------------- */

/* A missing file of an adapter directory is a malformed adapter, not a missing object. */
static ym_err read_small(const char *path, size_t limit, char **out, size_t *len, ym_diag *diag)
{
    ym_err err = ym_read_file(path, limit, out, len, diag);
    return err == YM_ENOENT ? YM_EFORMAT : err;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* "base_model.model.backbone.layers.{l}.mixer.{module}.{suffix}" -> l, module name, suffix.
 * Returns 0 when the name does not have that form. */
static int split_name(const char *name, int *layer, char *module, size_t mcap, const char **suffix)
{
    size_t np = strlen(PREFIX);
    if (strncmp(name, PREFIX, np) != 0)
        return 0;
    const char *s = name + np;
    if (*s < '0' || *s > '9')
        return 0;
    long l = 0;
    while (*s >= '0' && *s <= '9') {
        l = l * 10 + (*s++ - '0');
        if (l > 1000000)
            return 0;
    }
    if (strncmp(s, ".mixer.", 7) != 0)
        return 0;
    s += 7;
    const char *dot = strchr(s, '.');
    if (dot == NULL || (size_t)(dot - s) >= mcap)
        return 0;
    memcpy(module, s, (size_t)(dot - s));
    module[dot - s] = 0;
    *layer = (int)l;
    *suffix = dot + 1;
    return 1;
}

static int proj_of(const char *module)
{
    for (int p = 0; p < YM_PROJ_N; p++)
        if (strcmp(module, ym_proj_name((ym_proj)p)) == 0)
            return p;
    return -1;
}

static ym_err tensor_f32(const ym_st_tensor *t, float **out, ym_diag *diag)
{
    int64_t n = ym_st_tensor_numel(t);
    *out = NULL;
    if (t->dtype != YM_DT_F32 && t->dtype != YM_DT_F16 && t->dtype != YM_DT_BF16 &&
        t->dtype != YM_DT_F64)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: dtype %s, want F32, F16, BF16 or F64",
                           t->name, ym_dtype_name(t->dtype));
    float *buf = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (buf == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    ym_err err = ym_st_tensor_to_f32(t, buf, diag);
    if (err != YM_OK) {
        free(buf);
        return err;
    }
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(buf[i])) {
            const char *what = isnan(buf[i]) ? "NaN" : "infinite";
            free(buf);
            return ym_diag_set(diag, YM_EFORMAT, "tensor %s: element %lld is %s", t->name,
                               (long long)i, what);
        }
    *out = buf;
    return YM_OK;
}

static void shape_str(const ym_st_tensor *t, char *buf, size_t cap)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->n_dim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

static ym_err check_shape(const ym_st_tensor *t, int64_t d0, int64_t d1, const char *what,
                          ym_diag *diag)
{
    if (t->n_dim == 2 && t->shape[0] == d0 && t->shape[1] == d1)
        return YM_OK;
    char got[96];
    shape_str(t, got, sizeof(got));
    return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape %s, %s wants [%lld, %lld]", t->name,
                       got, what, (long long)d0, (long long)d1);
}

/* Reads the tensors of one PEFT adapter into a->pieces, against the resolved modules. */
static ym_err load_tensors(ym_adapter_t *a, const char *path, const ym_peft_config *pc,
                           const ym_peft_module *mods, const ym_adapter_limits *lim,
                           ym_diag *diag)
{
    const ym_config *cfg = &a->model->cfg;
    const int n_mod = cfg->n_layer * YM_PROJ_N;
    const int lora = pc->type == YM_PEFT_LORA;
    struct stat st;
    if (stat(path, &st) != 0)
        return ym_diag_set(diag, errno == ENOENT ? YM_EFORMAT : YM_EIO, "%s: %s", path,
                           strerror(errno));
    if ((size_t)st.st_size > lim->max_bytes)
        return ym_diag_set(diag, YM_EFORMAT, "%s: %lld bytes, the limit is %zu", path,
                           (long long)st.st_size, lim->max_bytes);
    ym_st_set_t *set = NULL;
    ym_err err = ym_st_set_open_file(path, &set, diag);
    if (err != YM_OK)
        return err;
    int n_expected = 0;
    for (int m = 0; m < n_mod; m++)
        n_expected += mods[m].targeted;
    a->pieces = calloc((size_t)(n_expected > 0 ? n_expected : 1), sizeof(piece));
    int *slot = malloc(sizeof(int) * (size_t)n_mod);
    if (a->pieces == NULL || slot == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto done;
    }
    for (int m = 0; m < n_mod; m++) {
        slot[m] = -1;
        if (!mods[m].targeted)
            continue;
        piece *p = &a->pieces[a->n_pieces];
        p->layer = m / YM_PROJ_N;
        p->proj = (ym_proj)(m % YM_PROJ_N);
        p->type = pc->type;
        p->ff = mods[m].ff;
        if (lora) {
            p->r = mods[m].r;
            if (p->r > lim->r_max) {
                err = ym_diag_set(diag, YM_EFORMAT, "layer %d %s: LoRA rank %d is over the limit "
                                  "of %d", p->layer, ym_proj_name(p->proj), p->r, lim->r_max);
                goto done;
            }
            p->scale = (float)(pc->rslora ? mods[m].alpha / sqrt((double)p->r)
                                          : mods[m].alpha / (double)p->r);
        }
        slot[m] = a->n_pieces++;
    }
    for (int i = 0; i < ym_st_set_n_tensors(set); i++) {
        const ym_st_tensor *t = ym_st_set_tensor(set, i);
        int l;
        char module[32];
        const char *suffix;
        if (strstr(t->name, "lora_embedding_") != NULL) {
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: LoRA on the embeddings is not "
                              "supported", t->name);
            goto done;
        }
        if (!split_name(t->name, &l, module, sizeof(module), &suffix)) {
            err = ym_diag_set(diag, YM_EFORMAT, "unexpected tensor %s (PEFT names are "
                              PREFIX "{layer}.mixer.{module}.%s)", t->name,
                              lora ? "lora_A.weight / lora_B.weight" : "ia3_l");
            goto done;
        }
        int pj = proj_of(module);
        if (pj < 0) {
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: module %s is not supported (yunmin "
                              "adapts in_proj, x_proj, dt_proj, out_proj)", t->name, module);
            goto done;
        }
        if (ym_proj_n_out(cfg, (ym_proj)pj) == 0) { /* e.g. x_proj on a Mamba-2 model */
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: module %s does not exist in a %s "
                              "model", t->name, module, ym_arch_name(cfg->arch));
            goto done;
        }
        if (l >= cfg->n_layer) {
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: layer %d, the base model has %d",
                              t->name, l, cfg->n_layer);
            goto done;
        }
        int m = l * YM_PROJ_N + pj;
        int is_a = strcmp(suffix, "lora_A.weight") == 0, is_b = strcmp(suffix, "lora_B.weight") == 0;
        int is_g = strcmp(suffix, "ia3_l") == 0;
        if (lora ? !(is_a || is_b) : !is_g) {
            err = ym_diag_set(diag, YM_EFORMAT, "unexpected tensor %s in a %s adapter", t->name,
                              lora ? "LORA" : "IA3");
            goto done;
        }
        if (slot[m] < 0) {
            err = ym_diag_set(diag, YM_EFORMAT, "extra tensor %s: adapter_config.json does not "
                              "target layer %d %s", t->name, l, module);
            goto done;
        }
        piece *p = &a->pieces[slot[m]];
        int64_t ni = ym_proj_n_in(cfg, (ym_proj)pj), no = ym_proj_n_out(cfg, (ym_proj)pj);
        float **dst = is_a ? &p->A : is_b ? &p->B : &p->g;
        if (*dst != NULL) { /* the parser refuses duplicate names; be safe anyway */
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s appears twice", t->name);
            goto done;
        }
        if (is_a && t->n_dim == 2 && t->shape[1] == ni && t->shape[0] != p->r)
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: rank %lld, adapter_config.json says "
                              "%d", t->name, (long long)t->shape[0], p->r);
        else if (is_b && t->n_dim == 2 && t->shape[0] == no && t->shape[1] != p->r)
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: rank %lld, adapter_config.json says "
                              "%d", t->name, (long long)t->shape[1], p->r);
        else if (is_a)
            err = check_shape(t, p->r, ni, "the base model", diag);
        else if (is_b)
            err = check_shape(t, no, p->r, "the base model", diag);
        else if (p->ff)
            err = check_shape(t, 1, ni, "the base model (feedforward: input scaling)", diag);
        else
            err = check_shape(t, no, 1, "the base model (output scaling)", diag);
        if (err != YM_OK)
            goto done;
        if ((err = tensor_f32(t, dst, diag)) != YM_OK)
            goto done;
        a->n_params += (size_t)ym_st_tensor_numel(t);
    }
    for (int k = 0; k < a->n_pieces; k++) {
        const piece *p = &a->pieces[k];
        const char *miss = lora ? (p->A == NULL ? "lora_A.weight" : p->B == NULL ? "lora_B.weight"
                                                                                 : NULL)
                                : (p->g == NULL ? "ia3_l" : NULL);
        if (miss != NULL) {
            err = ym_diag_set(diag, YM_EFORMAT, "%s: missing tensor " PREFIX "%d.mixer.%s.%s",
                              path, p->layer, ym_proj_name(p->proj), miss);
            goto done;
        }
    }
done:
    free(slot);
    ym_st_set_free(set);
    return err;
}

static ym_err adapter_new(ym_model_t *model, const char *kind, ym_adapter_t **out)
{
    ym_adapter_t *a = calloc(1, sizeof(*a));
    *out = NULL;
    if (a == NULL)
        return YM_ENOMEM;
    atomic_init(&a->refcount, 1);
    a->model = ym_model_ref(model);
    a->kind = kind;
    *out = a;
    return YM_OK;
}

static ym_err load_leaf(const char *dir, ym_model_t *model, const ym_adapter_limits *lim,
                        ym_adapter_t **out, ym_diag *diag)
{
    char path[4096];
    char *json = NULL;
    size_t len = 0;
    ym_peft_config pc;
    ym_peft_module *mods = NULL;
    ym_adapter_t *a = NULL;
    ym_diag d = {{0}, {0}};
    ym_err err;
    memset(&pc, 0, sizeof(pc));
    *out = NULL;
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    if ((err = read_small(path, MAX_CONFIG_BYTES, &json, &len, diag)) != YM_OK)
        return err;
    if ((err = ym_peft_config_parse(json, len, &pc, &d)) != YM_OK) {
        ym_diag_set(diag, err, "%s: %s", dir, d.msg);
        goto fail;
    }
    mods = calloc((size_t)model->cfg.n_layer * YM_PROJ_N, sizeof(*mods));
    if (mods == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto fail;
    }
    if ((err = ym_peft_config_resolve(&pc, model->cfg.n_layer, mods, &d)) != YM_OK) {
        ym_diag_set(diag, err, "%s: %s", dir, d.msg);
        goto fail;
    }
    if ((err = adapter_new(model, pc.type == YM_PEFT_LORA ? "lora" : "ia3", &a)) != YM_OK) {
        ym_diag_set(diag, err, "out of memory");
        goto fail;
    }
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    if (!file_exists(path)) {
        char bin[4096];
        snprintf(bin, sizeof(bin), "%s/adapter_model.bin", dir);
        err = ym_diag_set(diag, YM_EFORMAT, "%s: adapter_model.safetensors missing%s", dir,
                          file_exists(bin) ? " (adapter_model.bin is a pickle: save with "
                                             "safe_serialization, the default of PEFT)"
                                           : "");
        goto fail;
    }
    if ((err = load_tensors(a, path, &pc, mods, lim, &d)) != YM_OK) {
        ym_diag_set(diag, err, "%s: %s", dir, d.msg);
        goto fail;
    }
    if ((err = compile(a, diag)) != YM_OK)
        goto fail;
    *out = a;
    a = NULL;
fail:
    adapter_destroy(a);
    free(mods);
    free(json);
    ym_peft_config_deinit(&pc);
    return err;
}

static ym_err compose_kind(ym_adapter_t *const *parts, int n, const char *kind,
                           ym_adapter_t **out, ym_diag *diag)
{
    *out = NULL;
    if (n < 1 || parts == NULL)
        return ym_diag_set(diag, YM_EINVAL, "nothing to compose");
    for (int i = 0; i < n; i++) {
        if (parts[i] == NULL)
            return ym_diag_set(diag, YM_EINVAL, "adapter %d of the composition is NULL", i);
        if (!ym_adapt_fits(&parts[i]->applied, &parts[0]->model->cfg))
            return ym_diag_set(diag, YM_EINVAL, "adapter %d of the composition was loaded for "
                               "another model shape", i);
    }
    ym_adapter_t *a;
    ym_err err = adapter_new(parts[0]->model, kind, &a);
    if (err != YM_OK)
        return ym_diag_set(diag, err, "out of memory");
    if ((a->parts = calloc((size_t)n, sizeof(*a->parts))) == NULL) {
        adapter_destroy(a);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        a->parts[a->n_parts++] = ym_adapter_ref(parts[i]);
        a->n_params += parts[i]->n_params;
    }
    if ((err = compile(a, diag)) != YM_OK) {
        adapter_destroy(a);
        return err;
    }
    *out = a;
    return YM_OK;
}

ym_err ym_adapter_compose(ym_adapter_t *const *parts, int n, ym_adapter_t **out, ym_diag *diag)
{
    return compose_kind(parts, n, "composed", out, diag);
}

static ym_err load_set(const char *dir, ym_model_t *model, const ym_adapter_limits *lim,
                       ym_adapter_t **out, ym_diag *diag)
{
    char path[4096];
    char *json = NULL;
    size_t len = 0;
    ym_adapter_set_config sc;
    ym_adapter_t *parts[YM_ADAPTER_SET_MAX] = {0};
    int n = 0;
    ym_diag d = {{0}, {0}};
    ym_err err;
    memset(&sc, 0, sizeof(sc));
    snprintf(path, sizeof(path), "%s/adapter_set.json", dir);
    if ((err = read_small(path, MAX_CONFIG_BYTES, &json, &len, diag)) != YM_OK)
        return err;
    if ((err = ym_adapter_set_config_parse(json, len, &sc, &d)) != YM_OK) {
        ym_diag_set(diag, err, "%s: %s", dir, d.msg);
        goto done;
    }
    for (; n < sc.n_adapters; n++) {
        char sub[4096], nested[4096 + 32];
        snprintf(sub, sizeof(sub), "%s/%s", dir, sc.adapters[n]);
        snprintf(nested, sizeof(nested), "%s/adapter_set.json", sub);
        if (file_exists(nested)) {
            err = ym_diag_set(diag, YM_EFORMAT, "%s: adapter sets do not nest", sub);
            goto done;
        }
        if ((err = load_leaf(sub, model, lim, &parts[n], diag)) != YM_OK)
            goto done;
    }
    err = compose_kind(parts, n, "set", out, diag);
done:
    for (int i = 0; i < n; i++)
        ym_adapter_unref(parts[i]);
    free(json);
    ym_adapter_set_config_deinit(&sc);
    return err;
}

ym_err ym_adapter_load(const char *dir, ym_model_t *model, const ym_adapter_limits *lim,
                       ym_adapter_t **out, ym_diag *diag)
{
    *out = NULL;
    if (dir == NULL || model == NULL)
        return ym_diag_set(diag, YM_EINVAL, "no adapter directory or model");
    ym_adapter_limits L = {DEFAULT_R_MAX, DEFAULT_MAX_BYTES};
    if (lim != NULL && lim->r_max > 0)
        L.r_max = lim->r_max;
    if (lim != NULL && lim->max_bytes > 0)
        L.max_bytes = lim->max_bytes;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return ym_diag_set(diag, YM_ENOENT, "%s: not a directory", dir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/adapter_set.json", dir);
    if (file_exists(path))
        return load_set(dir, model, &L, out, diag);
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    if (!file_exists(path))
        return ym_diag_set(diag, YM_EFORMAT, "%s: neither adapter_config.json (PEFT adapter) nor "
                           "adapter_set.json (adapter set)", dir);
    return load_leaf(dir, model, &L, out, diag);
}

ym_err ym_adapter_new_random_lora(ym_model_t *model, int r, unsigned mask, uint64_t seed,
                                  ym_adapter_t **out, ym_diag *diag)
{
    *out = NULL;
    if (model == NULL || r < 1 || r > 4096 || (mask & ((1u << YM_PROJ_N) - 1)) == 0)
        return ym_diag_set(diag, YM_EINVAL, "random adapter: bad rank or projections");
    const ym_config *cfg = &model->cfg;
    ym_adapter_t *a;
    ym_err err = adapter_new(model, "lora", &a);
    if (err != YM_OK)
        return ym_diag_set(diag, err, "out of memory");
    a->pieces = calloc((size_t)cfg->n_layer * YM_PROJ_N, sizeof(piece));
    if (a->pieces == NULL)
        goto oom;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int l = 0; l < cfg->n_layer; l++)
        for (int pj = 0; pj < YM_PROJ_N; pj++) {
            if (!(mask & (1u << pj)))
                continue;
            size_t ni = (size_t)ym_proj_n_in(cfg, (ym_proj)pj);
            size_t no = (size_t)ym_proj_n_out(cfg, (ym_proj)pj);
            piece *p = &a->pieces[a->n_pieces++];
            p->layer = l;
            p->proj = (ym_proj)pj;
            p->type = YM_PEFT_LORA;
            p->r = r;
            p->scale = 1.0f; /* lora_alpha = r */
            p->A = malloc(sizeof(float) * ni * (size_t)r);
            p->B = malloc(sizeof(float) * no * (size_t)r);
            if (p->A == NULL || p->B == NULL)
                goto oom;
            float sa = 1.0f / sqrtf((float)ni), sb = 0.1f / sqrtf((float)r);
            for (size_t i = 0; i < ni * (size_t)r; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
                p->A[i] = sa * (2.0f * (float)(x >> 40) / 16777216.0f - 1.0f);
            }
            for (size_t i = 0; i < no * (size_t)r; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                p->B[i] = sb * (2.0f * (float)(x >> 40) / 16777216.0f - 1.0f);
            }
            a->n_params += (ni + no) * (size_t)r;
        }
    if ((err = compile(a, diag)) != YM_OK) {
        adapter_destroy(a);
        return err;
    }
    *out = a;
    return YM_OK;
oom:
    adapter_destroy(a);
    return ym_diag_set(diag, YM_ENOMEM, "out of memory");
}

void ym_adapter_info_get(const ym_adapter_t *a, ym_adapter_info *out)
{
    memset(out, 0, sizeof(*out));
    if (a == NULL)
        return;
    out->kind = a->kind;
    out->n_parts = a->n_leaves;
    out->r_max = a->r_max;
    out->targets = a->targets;
    out->n_params = a->n_params;
    out->bytes = a->arena_floats * sizeof(float) + sizeof(*a) +
                 (size_t)a->model->cfg.n_layer * YM_PROJ_N * sizeof(ym_adapt_proj);
}
