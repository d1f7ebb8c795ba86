/* tests/unit/m2ref.c - see m2ref.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/state.h"
#include "m2ref.h"
#include "testutil.h"

void m2_ref_load(const char *path, m2_ref *r)
{
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_st_set_open_file(path, &r->set, &d) == YM_OK, "%s: %s", path, d.msg);
    const ym_st_tensor *ids = ym_st_set_find(r->set, "ids"), *lg = ym_st_set_find(r->set, "logits");
    ck_assert(ids && lg && ids->dtype == YM_DT_I32);
    r->T = (int)ids->shape[0];
    r->V = (int)lg->shape[1];
    r->ids = malloc(sizeof(int32_t) * r->T);
    memcpy(r->ids, ids->data, sizeof(int32_t) * r->T);
    r->logits = malloc(sizeof(float) * (size_t)r->T * r->V);
    ck_assert_int_eq(ym_st_tensor_to_f32(lg, r->logits, NULL), YM_OK);
    r->scale = 1.0;
    for (size_t i = 0; i < (size_t)r->T * r->V; i++)
        r->scale = fmax(r->scale, fabs(r->logits[i]));
}

void m2_ref_free(m2_ref *r)
{
    free(r->ids);
    free(r->logits);
    ym_st_set_free(r->set);
}

double m2_maxdiff(const float *a, const float *b, size_t n)
{
    double e = 0.0;
    for (size_t i = 0; i < n; i++)
        e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

void m2_run_modes(ym_model_t *m, const m2_ref *r, int n_threads, double err[3])
{
    const int T = r->T, V = r->V, H = T / 2;
    ck_assert_int_eq(V, m->cfg.n_vocab);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, T + 1, n_threads, &ctx), YM_OK);
    ym_state_t *s0 = NULL, *s1 = NULL;
    ck_assert_int_eq(ym_state_new_for_model(m, &s0), YM_OK);
    ck_assert_int_eq(ym_state_new_for_model(m, &s1), YM_OK);
    float *got = malloc(sizeof(float) * (size_t)(T + 1) * V);
    ym_diag d = { { 0 }, { 0 } };
    ym_state_t *st[2] = { s0, s1 };

    int ss[3] = { 0, T, 0 };
    ym_batch b = { .n_seq = 1, .tokens = r->ids, .seq_start = ss, .states = st,
                   .logits = YM_LOGITS_ALL };
    ck_assert_msg(ym_forward(ctx, &b, got, &d) == YM_OK, "%s", d.msg);
    err[0] = m2_maxdiff(got, r->logits, (size_t)T * V);

    ym_state_reset(s0);
    err[1] = 0.0;
    b.logits = YM_LOGITS_LAST;
    for (int t = 0; t < T; t++) {
        ss[1] = 1;
        b.tokens = r->ids + t;
        ck_assert_int_eq(ym_forward(ctx, &b, got, &d), YM_OK);
        err[1] = fmax(err[1], m2_maxdiff(got, r->logits + (size_t)t * V, V));
    }

    ym_state_reset(s0);
    ym_state_reset(s1);
    ss[1] = H;
    b.tokens = r->ids;
    b.logits = YM_LOGITS_NONE;
    ck_assert_int_eq(ym_forward(ctx, &b, NULL, &d), YM_OK);
    ym_state_t *only1[1] = { s1 };
    for (int t = 0; t < H; t++) { /* sequence 1 alone up to H */
        int s1s[2] = { 0, 1 };
        ym_batch ob = { .n_seq = 1, .tokens = r->ids + t, .seq_start = s1s, .states = only1,
                        .logits = YM_LOGITS_NONE };
        ck_assert_int_eq(ym_forward(ctx, &ob, NULL, &d), YM_OK);
    }
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(T + 1));
    memcpy(tok, r->ids + H, sizeof(int32_t) * (size_t)(T - H));
    tok[T - H] = r->ids[H];
    int s2[3] = { 0, T - H, T - H + 1 };
    ym_batch rb = { .n_seq = 2, .tokens = tok, .seq_start = s2, .states = st,
                    .logits = YM_LOGITS_ALL };
    ck_assert_msg(ym_forward(ctx, &rb, got, &d) == YM_OK, "%s", d.msg);
    err[2] = m2_maxdiff(got, r->logits + (size_t)H * V, (size_t)(T - H) * V);
    err[2] = fmax(err[2], m2_maxdiff(got + (size_t)(T - H) * V, r->logits + (size_t)H * V, V));
    free(tok);
    free(got);
    ym_state_free(s0);
    ym_state_free(s1);
    ym_ctx_free(ctx);
}
