/* tests/unit/test_ssd.c - Mamba-2's SSD kernels (engine/ssd.c).
 *
 * Against float64 values from the NumPy reference (tests/fixtures/ssd/kernels.safetensors, made
 * by tests/fixtures/make_ssd_fixture.py from tests/fixtures/mamba2_ref.py): dt (softplus +
 * clamp), the decode step token by token, the chunked prefill for several chunk lengths (the
 * prompt never a multiple of most), and the gated norm per group. And against each other on
 * random odd shapes: prefill == step recurrence, head ranges split anywhere == the whole. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/ssd.h"
#include "testutil.h"

#define KFIX YM_FIXTURE("ssd/kernels.safetensors")

static ym_st_set_t *open_fix(void)
{
    ym_st_set_t *set = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_st_set_open_file(KFIX, &set, &d) == YM_OK, "%s: %s", KFIX, d.msg);
    return set;
}

/* A fixture tensor as f32 (new array; caller frees) or as its F64 data (borrowed). */
static float *get_f32(ym_st_set_t *set, const char *pfx, const char *name, size_t *n)
{
    char key[64];
    snprintf(key, sizeof(key), "%s%s", pfx, name);
    const ym_st_tensor *t = ym_st_set_find(set, key);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", key);
    size_t cnt = (size_t)ym_st_tensor_numel(t);
    float *v = malloc(cnt * sizeof(float));
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(ym_st_tensor_to_f32(t, v, NULL), YM_OK);
    if (n != NULL)
        *n = cnt;
    return v;
}

/* F64 data copied out (new array; caller frees): tensor data need not be 8-byte aligned. */
static double *get_f64(ym_st_set_t *set, const char *pfx, const char *name, size_t want)
{
    char key[64];
    snprintf(key, sizeof(key), "%s%s", pfx, name);
    const ym_st_tensor *t = ym_st_set_find(set, key);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", key);
    ck_assert_int_eq(t->dtype, YM_DT_F64);
    ck_assert_int_eq((long)ym_st_tensor_numel(t), (long)want);
    double *v = malloc(want * sizeof(double));
    ck_assert_ptr_nonnull(v);
    memcpy(v, t->data, want * sizeof(double));
    return v;
}

/* max |a - b| / max(1, max |b|) */
static double rel_err(const float *a, const double *b, size_t n)
{
    double e = 0.0, m = 1.0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    return e / m;
}

typedef struct kcase {
    ym_ssd_dims d;
    int T;
    float *dt_raw, *dt_bias, *lim, *x, *B, *C, *A, *D, *s0;
    double *dt, *y, *s1;
} kcase;

static void kcase_load(ym_st_set_t *set, const char *name, kcase *k)
{
    char pfx[32];
    snprintf(pfx, sizeof(pfx), "%s.", name);
    char key[64];
    snprintf(key, sizeof(key), "%sdims", pfx);
    const ym_st_tensor *dims = ym_st_set_find(set, key);
    ck_assert_ptr_nonnull(dims);
    int32_t dv[5];
    ck_assert_int_eq((long)ym_st_tensor_numel(dims), 5);
    memcpy(dv, dims->data, sizeof(dv));
    k->d = (ym_ssd_dims){ .n_head = dv[0], .head_dim = dv[1], .n_group = dv[2], .d_state = dv[3] };
    k->T = dv[4];
    int H = dv[0], P = dv[1], G = dv[2], N = dv[3], T = dv[4];
    k->dt_raw = get_f32(set, pfx, "dt_raw", NULL);
    k->dt_bias = get_f32(set, pfx, "dt_bias", NULL);
    k->lim = get_f32(set, pfx, "dt_limit", NULL);
    k->x = get_f32(set, pfx, "x", NULL);
    k->B = get_f32(set, pfx, "B", NULL);
    k->C = get_f32(set, pfx, "C", NULL);
    k->A = get_f32(set, pfx, "A", NULL);
    k->D = get_f32(set, pfx, "D", NULL);
    k->s0 = get_f32(set, pfx, "s0", NULL);
    k->dt = get_f64(set, pfx, "dt", (size_t)T * H);
    k->y = get_f64(set, pfx, "y", (size_t)T * H * P);
    k->s1 = get_f64(set, pfx, "s1", (size_t)H * P * N);
    (void)G;
}

static void kcase_free(kcase *k)
{
    free(k->dt_raw), free(k->dt_bias), free(k->lim), free(k->x), free(k->B), free(k->C);
    free(k->A), free(k->D), free(k->s0), free(k->dt), free(k->y), free(k->s1);
}

static const char *const CASES[] = { "odd", "wide", "decay" };

START_TEST(test_ssd_dt_matches_reference)
{
    ym_st_set_t *set = open_fix();
    kcase k;
    kcase_load(set, CASES[_i], &k);
    int H = k.d.n_head, T = k.T;
    float *dt = malloc(sizeof(float) * (size_t)T * H);
    memcpy(dt, k.dt_raw, sizeof(float) * (size_t)T * H);
    float hi = k.lim[1] > 1e38f ? INFINITY : k.lim[1];
    ym_ssd_dt_f32(dt, H, T, k.dt_bias, H, k.lim[0], hi);
    double e = rel_err(dt, k.dt, (size_t)T * H);
    ck_assert_msg(e < 1e-6, "%s: dt rel err %g", CASES[_i], e);
    free(dt);
    kcase_free(&k);
    ym_st_set_free(set);
}
END_TEST

/* The fixture's dt rounded to f32 (what the engine would hold after ym_ssd_dt_f32). */
static float *dt_f32(const kcase *k)
{
    size_t n = (size_t)k->T * k->d.n_head;
    float *dt = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        dt[i] = (float)k->dt[i];
    return dt;
}

START_TEST(test_ssd_step_matches_reference)
{
    ym_st_set_t *set = open_fix();
    kcase k;
    kcase_load(set, CASES[_i], &k);
    const ym_ssd_dims *d = &k.d;
    int H = d->n_head, P = d->head_dim, G = d->n_group, N = d->d_state, T = k.T;
    size_t ns = (size_t)H * P * N;
    float *dt = dt_f32(&k);
    float *y = malloc(sizeof(float) * (size_t)T * H * P);
    float *s = malloc(sizeof(float) * ns), *s_ref = malloc(sizeof(float) * ns);
    float *y_ref = malloc(sizeof(float) * (size_t)T * H * P);
    memcpy(s, k.s0, sizeof(float) * ns);
    memcpy(s_ref, k.s0, sizeof(float) * ns);
    for (int t = 0; t < T; t++) {
        size_t o = (size_t)t * H * P, b = (size_t)t * G * N;
        ym_ssd_step_f32(y + o, s, k.x + o, dt + (size_t)t * H, k.A, k.D, k.B + b, k.C + b, d, 0,
                        H);
        ym_ssd_step_ref(y_ref + o, s_ref, k.x + o, dt + (size_t)t * H, k.A, k.D, k.B + b,
                        k.C + b, d, 0, H);
    }
    double ey = rel_err(y, k.y, (size_t)T * H * P), es = rel_err(s, k.s1, ns);
    double ry = rel_err(y_ref, k.y, (size_t)T * H * P);
    ck_assert_msg(ey < 2e-5 && es < 2e-5 && ry < 2e-5, "%s: step y %g s %g (plain loop y %g)",
                  CASES[_i], ey, es, ry);
    free(dt), free(y), free(s), free(s_ref), free(y_ref);
    kcase_free(&k);
    ym_st_set_free(set);
}
END_TEST

START_TEST(test_ssd_prefill_matches_reference_for_every_chunk)
{
    static const int chunks[] = { 1, 2, 4, 5, 8, 13, 64 };
    ym_st_set_t *set = open_fix();
    kcase k;
    kcase_load(set, CASES[_i], &k);
    const ym_ssd_dims *d = &k.d;
    int H = d->n_head, P = d->head_dim, G = d->n_group, N = d->d_state, T = k.T;
    size_t ns = (size_t)H * P * N;
    float *dt = dt_f32(&k);
    float *y = malloc(sizeof(float) * (size_t)T * H * P), *s = malloc(sizeof(float) * ns);
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        float *work = malloc(sizeof(float) * ym_ssd_prefill_work(d, chunks[c]));
        memcpy(s, k.s0, sizeof(float) * ns);
        memset(y, 0xff, sizeof(float) * (size_t)T * H * P); /* NaN: every entry must be written */
        ym_ssd_prefill_f32(y, H * P, s, k.x, H * P, dt, H, k.B, k.C, G * N, k.A, k.D, T, d,
                           chunks[c], 0, H, work);
        double ey = rel_err(y, k.y, (size_t)T * H * P), es = rel_err(s, k.s1, ns);
        ck_assert_msg(ey < 5e-5 && es < 5e-5, "%s chunk %d: y %g s %g", CASES[_i], chunks[c],
                      ey, es);
        free(work);
    }
    free(dt), free(y), free(s);
    kcase_free(&k);
    ym_st_set_free(set);
}
END_TEST

START_TEST(test_gated_rmsnorm_per_group_matches_reference)
{
    static const int groups[] = { 1, 3 };
    ym_st_set_t *set = open_fix();
    char pfx[16];
    snprintf(pfx, sizeof(pfx), "norm%d.", groups[_i]);
    size_t n, nw;
    float *y = get_f32(set, pfx, "y", &n), *z = get_f32(set, pfx, "z", NULL);
    float *w = get_f32(set, pfx, "w", &nw), *eps = get_f32(set, pfx, "eps", NULL);
    double *want = get_f64(set, pfx, "out", n);
    int Di = (int)nw, T = (int)(n / nw);
    float *out = malloc(n * sizeof(float)), *out_ref = malloc(n * sizeof(float));
    ym_gated_rmsnorm_f32(out, Di, y, Di, z, Di, T, w, Di, groups[_i], eps[0]);
    ym_gated_rmsnorm_ref(out_ref, Di, y, Di, z, Di, T, w, Di, groups[_i], eps[0]);
    double e = rel_err(out, want, n), er = rel_err(out_ref, want, n);
    ck_assert_msg(e < 1e-5 && er < 1e-6, "groups %d: %g (plain loop %g)", groups[_i], e, er);
    /* in place (out == y), as the forward will call it */
    ym_gated_rmsnorm_f32(y, Di, y, Di, z, Di, T, w, Di, groups[_i], eps[0]);
    ck_assert(memcmp(y, out, n * sizeof(float)) == 0);
    /* the whole-width norm differs from the grouped one when there are several groups */
    if (groups[_i] > 1) {
        y = (free(y), get_f32(set, pfx, "y", NULL));
        ym_gated_rmsnorm_f32(out, Di, y, Di, z, Di, T, w, Di, 1, eps[0]);
        ck_assert_msg(rel_err(out, want, n) > 1e-3, "whole-width norm should differ");
    }
    free(y), free(z), free(w), free(eps), free(out), free(out_ref), free(want);
    ym_st_set_free(set);
}
END_TEST

/* ---- self-consistency on random shapes ---------------------------------------------------- */

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

/* Inputs in a wide row layout like the forward's: x|B|C in one row of ld = Di + 2GN + pad,
 * dt in its own rows with ld > H, y rows with ld > Di. */
static void random_prefill_vs_step(int H, int P, int G, int N, int T, int chunk, float decay,
                                   unsigned seed)
{
    ym_ssd_dims d = { .n_head = H, .head_dim = P, .n_group = G, .d_state = N };
    int Di = H * P, ldx = Di + 2 * G * N + 3, lddt = H + 2, ldy = Di + 5;
    float *xbc = malloc(sizeof(float) * (size_t)T * ldx), *dt = malloc(sizeof(float) * T * lddt);
    float *A = malloc(sizeof(float) * H), *D = malloc(sizeof(float) * H);
    size_t ns = (size_t)H * P * N;
    float *s0 = malloc(sizeof(float) * ns), *s1 = malloc(sizeof(float) * ns);
    float *s2 = malloc(sizeof(float) * ns), *s3 = malloc(sizeof(float) * ns);
    float *y1 = calloc((size_t)T * ldy, sizeof(float)), *y2 = calloc((size_t)T * ldy, sizeof(float));
    float *y3 = calloc((size_t)T * ldy, sizeof(float));
    for (int i = 0; i < T * ldx; i++)
        xbc[i] = frand(&seed);
    for (int i = 0; i < T * lddt; i++)
        dt[i] = 0.05f + decay * (frand(&seed) + 1.0f);
    for (int h = 0; h < H; h++) {
        A[h] = -(0.2f + 2.0f * (frand(&seed) + 1.0f));
        D[h] = frand(&seed);
    }
    for (size_t i = 0; i < ns; i++)
        s0[i] = frand(&seed);
    const float *x = xbc, *B = xbc + Di, *C = xbc + Di + G * N;
    memcpy(s1, s0, sizeof(float) * ns);
    memcpy(s2, s0, sizeof(float) * ns);
    memcpy(s3, s0, sizeof(float) * ns);
    ym_ssd_prefill_ref(y1, ldy, s1, x, ldx, dt, lddt, B, C, ldx, A, D, T, &d, 0, H);
    float *work = malloc(sizeof(float) * ym_ssd_prefill_work(&d, chunk));
    ym_ssd_prefill_f32(y2, ldy, s2, x, ldx, dt, lddt, B, C, ldx, A, D, T, &d, chunk, 0, H, work);
    /* the same split into head ranges that cut groups anywhere */
    for (int h0 = 0; h0 < H;) {
        int h1 = h0 + 1 + (int)((unsigned)(h0 * 7 + 3) % 3);
        h1 = h1 > H ? H : h1;
        ym_ssd_prefill_f32(y3, ldy, s3, x, ldx, dt, lddt, B, C, ldx, A, D, T, &d, chunk, h0, h1,
                           work);
        h0 = h1;
    }
    double ey = 0, es = 0, m = 1;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < Di; c++) {
            size_t i = (size_t)t * ldy + c;
            m = fmax(m, fabs(y1[i]));
            ey = fmax(ey, fabs(y1[i] - y2[i]));
            ck_assert_msg(y2[i] == y3[i], "head ranges change the result at t %d c %d", t, c);
        }
    for (size_t i = 0; i < ns; i++) {
        es = fmax(es, fabs(s1[i] - s2[i]));
        ck_assert(s2[i] == s3[i]);
    }
    ck_assert_msg(ey / m < 2e-5 && es / m < 2e-5, "H%d P%d G%d N%d T%d chunk %d: y %g s %g", H, P,
                  G, N, T, chunk, ey / m, es / m);
    for (int t = 0; t < T; t++) /* the padding columns of y are not touched */
        for (int c = Di; c < ldy; c++)
            ck_assert(y2[(size_t)t * ldy + c] == 0.0f);
    free(xbc), free(dt), free(A), free(D), free(s0), free(s1), free(s2), free(s3);
    free(y1), free(y2), free(y3), free(work);
}

START_TEST(test_ssd_prefill_equals_step_recurrence_on_odd_shapes)
{
    random_prefill_vs_step(6, 5, 3, 7, 29, 8, 0.3f, 1);      /* 29 = 3 chunks of 8 + 5 */
    random_prefill_vs_step(9, 3, 3, 5, 17, 16, 0.2f, 2);
    random_prefill_vs_step(4, 16, 1, 33, 50, 7, 0.1f, 3);    /* d_state past a 16-lane multiple */
    random_prefill_vs_step(2, 8, 2, 16, 3, 64, 0.5f, 4);     /* prompt shorter than a chunk */
    random_prefill_vs_step(3, 4, 1, 9, 40, 12, 6.0f, 5);     /* decay past the factored range */
    random_prefill_vs_step(5, 7, 5, 3, 1, 4, 0.3f, 6);       /* one token */
}
END_TEST

START_TEST(test_ssd_state_bytes_of_mamba2_130m)
{
    /* mamba2-130m: 24 layers of 24 heads x 64 x 128 (1 group), conv 4 over 1536 + 256 */
    ym_ssd_dims d = { .n_head = 24, .head_dim = 64, .n_group = 1, .d_state = 128 };
    size_t per_layer = ym_ssd_state_bytes(&d, 4);
    ck_assert_uint_eq(per_layer, ((1536 + 256) * 3 + 24 * 64 * 128) * 4);
    ck_assert_uint_eq(24 * per_layer, 19390464); /* 18.49 MiB per sequence */
}
END_TEST

/* ---- the whole Mamba-2 layer recipe against the model fixtures' logits --------------------- */

/* A Mamba-2 model's forward assembled from the kernels above, plain sgemm and simple loops: the
 * recipe the engine's forward will follow, checked end to end against the float64 reference's
 * logits (tests/fixtures/mamba2/, made by make_mamba2_fixtures.py). prefill: each layer over the
 * whole prompt with ym_ssd_prefill_f32 (chunk Q); otherwise token by token with ym_ssd_step_f32. */
#define M2DIR YM_FIXTURE("mamba2")

typedef struct m2model {
    ym_config c;
    ym_st_set_t *st;
} m2model;

static float *tensor(m2model *m, const char *fmt, int l, size_t want)
{
    char name[128];
    snprintf(name, sizeof(name), fmt, l);
    const ym_st_tensor *t = ym_st_set_find(m->st, name);
    if (t == NULL)
        return NULL;
    ck_assert_msg((size_t)ym_st_tensor_numel(t) == want, "%s: %ld values, want %zu", name,
                  (long)ym_st_tensor_numel(t), want);
    float *v = malloc(want * sizeof(float));
    ck_assert_int_eq(ym_st_tensor_to_f32(t, v, NULL), YM_OK);
    return v;
}

static void rmsnorm_rows(float *out, const float *x, int T, int n, const float *w, float eps)
{
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[(size_t)t * n + i] * x[(size_t)t * n + i];
        float r = (float)(1.0 / sqrt(ss / n + eps));
        for (int i = 0; i < n; i++)
            out[(size_t)t * n + i] = x[(size_t)t * n + i] * r * w[i];
    }
}

/* logits [T, V] (new array) for ids [T] */
static float *m2_forward(m2model *m, const int32_t *ids, int T, int prefill, int chunk)
{
    const ym_config *c = &m->c;
    const int D = c->d_model, Di = c->d_inner, H = c->n_head, P = c->head_dim, G = c->n_group;
    const int N = c->d_state, K = c->d_conv, V = c->n_vocab, GN = G * N, cd = Di + 2 * GN;
    const int n_in = Di + cd + H;
    ym_ssd_dims dims = { H, P, G, N };
    float *emb = tensor(m, "backbone.embeddings.weight", 0, (size_t)V * D);
    if (emb == NULL)
        emb = tensor(m, "backbone.embedding.weight", 0, (size_t)V * D);
    ck_assert_ptr_nonnull(emb);
    float *h = malloc(sizeof(float) * T * D), *hn = malloc(sizeof(float) * T * D);
    float *zxd = malloc(sizeof(float) * T * n_in), *xbc = malloc(sizeof(float) * T * cd);
    float *dt = malloc(sizeof(float) * T * H), *y = malloc(sizeof(float) * T * Di);
    float *s = malloc(sizeof(float) * H * P * N), *A = malloc(sizeof(float) * H);
    float *work = malloc(sizeof(float) * ym_ssd_prefill_work(&dims, chunk));
    for (int t = 0; t < T; t++)
        memcpy(h + (size_t)t * D, emb + (size_t)ids[t] * D, sizeof(float) * D);
    for (int l = 0; l < c->n_layer; l++) {
        float *nw = tensor(m, "backbone.layers.%d.norm.weight", l, D);
        float *W = tensor(m, "backbone.layers.%d.mixer.in_proj.weight", l, (size_t)n_in * D);
        float *Wb = tensor(m, "backbone.layers.%d.mixer.in_proj.bias", l, n_in);
        float *cw = tensor(m, "backbone.layers.%d.mixer.conv1d.weight", l, (size_t)cd * K);
        float *cb = tensor(m, "backbone.layers.%d.mixer.conv1d.bias", l, cd);
        float *dtb = tensor(m, "backbone.layers.%d.mixer.dt_bias", l, H);
        float *Al = tensor(m, "backbone.layers.%d.mixer.A_log", l, H);
        float *Dh = tensor(m, "backbone.layers.%d.mixer.D", l, H);
        float *gw = tensor(m, "backbone.layers.%d.mixer.norm.weight", l, Di);
        float *O = tensor(m, "backbone.layers.%d.mixer.out_proj.weight", l, (size_t)D * Di);
        float *Ob = tensor(m, "backbone.layers.%d.mixer.out_proj.bias", l, D);
        ck_assert(nw && W && cw && dtb && Al && Dh && gw && O);
        ck_assert(c->use_bias == (Wb != NULL) && c->use_bias == (Ob != NULL));
        ck_assert(c->use_conv_bias == (cb != NULL));
        rmsnorm_rows(hn, h, T, D, nw, c->norm_eps);
        /* [z | xBC | dt] = h_n in_proj^T + b */
        for (int t = 0; t < T; t++)
            for (int j = 0; j < n_in; j++)
                zxd[(size_t)t * n_in + j] = Wb ? Wb[j] : 0.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_in, D, 1.0f, hn, D, W, D,
                    1.0f, zxd, n_in);
        /* causal depthwise conv over x|B|C from a zero state, then silu */
        for (int t = 0; t < T; t++)
            for (int ch = 0; ch < cd; ch++) {
                float acc = cb ? cb[ch] : 0.0f;
                for (int k = 0; k < K; k++) {
                    int src = t - (K - 1) + k;
                    if (src >= 0)
                        acc += cw[(size_t)ch * K + k] * zxd[(size_t)src * n_in + Di + ch];
                }
                xbc[(size_t)t * cd + ch] = acc / (1.0f + expf(-acc));
            }
        for (int t = 0; t < T; t++)
            memcpy(dt + (size_t)t * H, zxd + (size_t)t * n_in + Di + cd, sizeof(float) * H);
        ym_ssd_dt_f32(dt, H, T, dtb, H, c->dt_min, c->dt_max);
        for (int i = 0; i < H; i++)
            A[i] = -expf(Al[i]);
        memset(s, 0, sizeof(float) * H * P * N);
        if (prefill) {
            ym_ssd_prefill_f32(y, Di, s, xbc, cd, dt, H, xbc + Di, xbc + Di + GN, cd, A, Dh, T,
                               &dims, chunk, 0, H, work);
        } else {
            for (int t = 0; t < T; t++) {
                const float *row = xbc + (size_t)t * cd;
                ym_ssd_step_f32(y + (size_t)t * Di, s, row, dt + (size_t)t * H, A, Dh, row + Di,
                                row + Di + GN, &dims, 0, H);
            }
        }
        ym_gated_rmsnorm_f32(y, Di, y, Di, zxd, n_in, T, gw, Di, G, c->gated_norm_eps);
        for (int t = 0; t < T; t++)
            for (int j = 0; j < D && Ob; j++)
                h[(size_t)t * D + j] += Ob[j];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, D, Di, 1.0f, y, Di, O, Di, 1.0f,
                    h, D);
        free(nw), free(W), free(Wb), free(cw), free(cb), free(dtb), free(Al), free(Dh);
        free(gw), free(O), free(Ob);
    }
    float *nf = tensor(m, "backbone.norm_f.weight", 0, D);
    rmsnorm_rows(hn, h, T, D, nf, c->norm_eps);
    float *head = c->tie_embeddings ? emb : tensor(m, "lm_head.weight", 0, (size_t)V * D);
    ck_assert_ptr_nonnull(head);
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, V, D, 1.0f, hn, D, head, D, 0.0f,
                logits, V);
    if (head != emb)
        free(head);
    free(emb), free(h), free(hn), free(zxd), free(xbc), free(dt), free(y), free(s), free(A);
    free(work), free(nf);
    return logits;
}

static const char *const M2_MODELS[] = { "m2-g1-k4-f32", "m2-g2-bias-untied-k3-bf16",
                                         "m2-g3-odd-k2-f32", "ss-m2-g1-k4-f32" };

START_TEST(test_ssd_layer_recipe_matches_reference_logits)
{
    const char *name = M2_MODELS[_i];
    char dir[2048], path[4096];
    snprintf(dir, sizeof(dir), "%s/%s", M2DIR, name);
    m2model m = { 0 };
    ym_diag d = { { 0 }, { 0 } };
    snprintf(path, sizeof(path), "%s/config.json", dir);
    char *txt = NULL;
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s missing", path);
    txt = malloc(1 << 16);
    size_t n = fread(txt, 1, (1 << 16) - 1, f);
    fclose(f);
    ck_assert_msg(ym_config_parse(txt, n, &m.c, &d) == YM_OK, "%s: %s", path, d.msg);
    free(txt);
    ck_assert_int_eq(m.c.arch, YM_ARCH_MAMBA2);
    ck_assert_msg(ym_st_set_open_dir(dir, &m.st, &d) == YM_OK, "%s: %s", dir, d.msg);
    /* the reference logits: the ss- copy shares its source's */
    const char *lsrc = strncmp(name, "ss-", 3) == 0 ? name + 3 : name;
    snprintf(path, sizeof(path), "%s/%s/logits.safetensors", M2DIR, lsrc);
    ym_st_set_t *ref = NULL;
    ck_assert_msg(ym_st_set_open_file(path, &ref, &d) == YM_OK, "%s: %s", path, d.msg);
    const ym_st_tensor *ids_t = ym_st_set_find(ref, "ids"), *lg_t = ym_st_set_find(ref, "logits");
    ck_assert(ids_t && lg_t && ids_t->dtype == YM_DT_I32);
    int T = (int)ids_t->shape[0], V = (int)lg_t->shape[1];
    ck_assert_int_eq(V, m.c.n_vocab);
    int32_t *ids = malloc(sizeof(int32_t) * T);
    memcpy(ids, ids_t->data, sizeof(int32_t) * T);
    float *want = malloc(sizeof(float) * (size_t)T * V);
    ck_assert_int_eq(ym_st_tensor_to_f32(lg_t, want, NULL), YM_OK);
    double scale = 1.0;
    for (size_t i = 0; i < (size_t)T * V; i++)
        scale = fmax(scale, fabs(want[i]));
    const double atol = 1e-3 * scale; /* the manifest's rule */
    const int chunks[] = { m.c.chunk_size, 4, 64 };
    for (int mode = 0; mode < 4; mode++) {
        float *got = m2_forward(&m, ids, T, mode < 3, mode < 3 ? chunks[mode] : 0);
        double e = 0.0;
        for (size_t i = 0; i < (size_t)T * V; i++)
            e = fmax(e, fabs((double)got[i] - want[i]));
        if (getenv("YM_TEST_VERBOSE") != NULL)
            fprintf(stderr, "%s %s%d: max |diff| %.3g (scale %.3g)\n", name,
                    mode < 3 ? "prefill chunk " : "step", mode < 3 ? chunks[mode] : 0, e, scale);
        ck_assert_msg(e < atol && e < 1e-4 * scale, "%s %s%d: max |diff| %g (atol %g)", name,
                      mode < 3 ? "prefill chunk " : "step", mode < 3 ? chunks[mode] : 0, e, atol);
        free(got);
    }
    free(ids), free(want);
    ym_st_set_free(ref);
    ym_st_set_free(m.st);
}
END_TEST

Suite *ssd_suite(void)
{
    Suite *s = suite_create("ssd");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_ssd_dt_matches_reference, 0, 3);
    tcase_add_loop_test(tc, test_ssd_step_matches_reference, 0, 3);
    tcase_add_loop_test(tc, test_ssd_prefill_matches_reference_for_every_chunk, 0, 3);
    tcase_add_loop_test(tc, test_gated_rmsnorm_per_group_matches_reference, 0, 2);
    tcase_add_test(tc, test_ssd_prefill_equals_step_recurrence_on_odd_shapes);
    tcase_add_test(tc, test_ssd_state_bytes_of_mamba2_130m);
    tcase_add_loop_test(tc, test_ssd_layer_recipe_matches_reference_logits, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}
