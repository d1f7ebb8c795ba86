/* tests/unit/test_sparsity.c - the sparsity profile file: a valid profile round-trips and
 * gives the served layout docs/ARCHITECTURE.md §4 defines; every malformation is refused with a message
 * naming the tensor or key. Malformed files are made with the project's own safetensors
 * writer, one defect at a time, so each test fails for exactly one reason. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "engine/sparsity.h"
#include "testutil.h"

enum { L_ = 2, DI = 6, NS = 3 };

/* A profile description to write, with knobs for one defect. */
typedef struct spec {
    float cl[L_][DI];
    float sl[L_][DI * NS];
    int32_t so[L_][DI];
    const char *format, *version, *method;
    int drop_tensor;      /* index into the 3*L_ tensors to leave out, or -1 */
    int extra_tensor;     /* add an unexpected tensor */
    int wrong_dtype;      /* tensor index written with the wrong dtype, or -1 */
    int wrong_shape;      /* tensor index written with a wrong shape, or -1 */
} spec;

static void spec_default(spec *s)
{
    memset(s, 0, sizeof(*s));
    for (int l = 0; l < L_; l++) {
        for (int d = 0; d < DI; d++) {
            s->cl[l][d] = (d % 3 == 1) ? -1.0f : 0.5f; /* channels 1 and 4 dropped */
            s->so[l][d] = (int32_t)((d * 5 + l) % DI);  /* a non-identity permutation */
            for (int n = 0; n < NS; n++)
                s->sl[l][d * NS + n] = ((d + n + l) % 2) ? 1.0f : -2.0f;
        }
    }
    s->format = "yunmin-sparsity";
    s->version = "1";
    s->method = "magnitude";
    s->drop_tensor = s->wrong_dtype = s->wrong_shape = -1;
}

/* The bytes of a safetensors file holding t[0..nt) and meta (ym_st_write into a temporary
 * file, read back, removed); the caller frees them. */
static uint8_t *written_bytes(const ym_st_wtensor *t, int nt, const ym_st_meta *meta, int nm,
                              size_t *len)
{
    char path[] = "/tmp/ym-sparsity-test-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ym_diag d = {0};
    ck_assert_msg(ym_st_write(path, t, nt, meta, nm, &d) == YM_OK, "%s", d.msg);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    unlink(path);
    *len = (size_t)n;
    return buf;
}

static uint8_t *spec_bytes(const spec *s, size_t *len)
{
    ym_st_wtensor t[3 * L_ + 1];
    char names[3 * L_ + 1][48];
    static const float pad[64];
    int nt = 0;
    for (int i = 0; i < 3 * L_; i++) {
        if (i == s->drop_tensor)
            continue;
        int l = i / 3, j = i % 3;
        ym_st_wtensor *w = &t[nt];
        memset(w, 0, sizeof(*w));
        snprintf(names[nt], sizeof(names[nt]), "layers.%d.%s", l,
                 j == 0 ? "channel_logits" : j == 1 ? "state_logits" : "scan_order");
        w->name = names[nt];
        w->n_dim = j == 1 ? 2 : 1;
        w->shape[0] = DI;
        w->shape[1] = NS;
        w->dtype = j == 2 ? YM_DT_I32 : YM_DT_F32;
        w->data = j == 0 ? (const void *)s->cl[l] : j == 1 ? (const void *)s->sl[l]
                                                           : (const void *)s->so[l];
        if (i == s->wrong_dtype)
            w->dtype = j == 2 ? YM_DT_F32 : YM_DT_I32; /* same size, other type */
        if (i == s->wrong_shape)
            w->shape[0] = DI - 1;
        nt++;
    }
    if (s->extra_tensor) {
        ym_st_wtensor *w = &t[nt];
        memset(w, 0, sizeof(*w));
        snprintf(names[nt], sizeof(names[nt]), "layers.0.bias");
        w->name = names[nt];
        w->n_dim = 1;
        w->shape[0] = 4;
        w->dtype = YM_DT_F32;
        w->data = pad;
        nt++;
    }
    ym_st_meta meta[3];
    int nm = 0;
    if (s->format)
        meta[nm++] = (ym_st_meta){(char *)"format", (char *)s->format};
    if (s->version)
        meta[nm++] = (ym_st_meta){(char *)"version", (char *)s->version};
    if (s->method)
        meta[nm++] = (ym_st_meta){(char *)"method", (char *)s->method};
    return written_bytes(t, nt, meta, nm, len);
}

/* Parse s; expect failure whose message contains want (or success when want is NULL). */
static void expect(const spec *s, const char *want)
{
    size_t n;
    uint8_t *buf = spec_bytes(s, &n);
    ym_sparsity *sp = NULL;
    ym_diag d = {0};
    ym_err err = ym_sparsity_parse(buf, n, &sp, &d);
    if (want == NULL) {
        ck_assert_msg(err == YM_OK, "%s", d.msg);
        ck_assert_ptr_nonnull(sp);
    } else {
        ck_assert_int_eq(err, YM_EFORMAT);
        ck_assert_ptr_null(sp);
        ck_assert_msg(strstr(d.msg, want) != NULL, "message '%s' lacks '%s'", d.msg, want);
    }
    ym_sparsity_free(sp);
    free(buf);
}

START_TEST(test_sparsity_parses_and_derives_served_layout)
{
    spec s;
    spec_default(&s);
    size_t n;
    uint8_t *buf = spec_bytes(&s, &n);
    ym_sparsity *sp = NULL;
    ym_diag d = {0};
    ck_assert_msg(ym_sparsity_parse(buf, n, &sp, &d) == YM_OK, "%s", d.msg);
    ck_assert_int_eq(sp->n_layer, L_);
    ck_assert_int_eq(sp->d_inner, DI);
    ck_assert_int_eq(sp->d_state, NS);
    ck_assert_str_eq(sp->method, "magnitude");
    for (int l = 0; l < L_; l++) {
        const ym_sparsity_layer *L = &sp->layers[l];
        /* Independent derivation: walk the order, count kept channels before each. */
        int pos = 0;
        int64_t live = 0;
        for (int k = 0; k < DI; k++) {
            int dch = s.so[l][k];
            int kept = s.cl[l][dch] > 0;
            ck_assert_int_eq(ym_sparsity_served_channel(sp, l, dch), kept ? pos : -1);
            if (kept) {
                ck_assert_int_eq(L->kept[pos], dch);
                pos++;
                for (int q = 0; q < NS; q++)
                    live += s.sl[l][dch * NS + q] > 0;
            }
            for (int q = 0; q < NS; q++)
                ck_assert_int_eq(ym_sparsity_state_kept(sp, l, dch, q),
                                 kept && s.sl[l][dch * NS + q] > 0);
        }
        ck_assert_int_eq(L->n_kept, pos);
        ck_assert_int_eq(L->n_kept, 4);
        ck_assert_int_eq(L->n_live, live);
    }
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.n_layer = L_;
    c.d_inner = DI;
    c.d_state = NS;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, NULL), YM_OK);
    c.d_state = NS + 1;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_EFORMAT);
    ck_assert(strstr(d.msg, "d_state") != NULL);
    c.d_state = NS;
    c.n_layer = 3;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_EFORMAT);
    ck_assert(strstr(d.msg, "layers") != NULL);

    /* Save and parse again: the same profile. */
    char path[] = "/tmp/ym-sparsity-rt-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    ym_st_meta extra = {(char *)"note", (char *)"x"};
    ck_assert_msg(ym_sparsity_save(sp, path, &extra, 1, &d) == YM_OK, "%s", d.msg);
    ym_sparsity *sp2 = NULL;
    ck_assert_msg(ym_sparsity_load(path, &sp2, &d) == YM_OK, "%s", d.msg);
    unlink(path);
    for (int l = 0; l < L_; l++) {
        ck_assert_mem_eq(sp->layers[l].scan_order, sp2->layers[l].scan_order, DI * 4);
        ck_assert_mem_eq(sp->layers[l].state_logits, sp2->layers[l].state_logits, DI * NS * 4);
        ck_assert_mem_eq(sp->layers[l].served, sp2->layers[l].served, DI * 4);
    }
    ym_sparsity_free(sp2);
    ym_sparsity_free(sp);
    free(buf);
}
END_TEST

START_TEST(test_sparsity_refuses_non_permutation_order)
{
    spec s;
    spec_default(&s);
    s.so[1][2] = s.so[1][3]; /* a repeat */
    expect(&s, "layers.1.scan_order");
    spec_default(&s);
    s.so[0][0] = DI; /* out of range */
    expect(&s, "outside");
    spec_default(&s);
    s.so[0][5] = -1;
    expect(&s, "layers.0.scan_order");
}
END_TEST

START_TEST(test_sparsity_refuses_nan_logits)
{
    spec s;
    spec_default(&s);
    s.cl[1][4] = NAN;
    expect(&s, "layers.1.channel_logits: NaN");
    spec_default(&s);
    s.sl[0][7] = NAN;
    expect(&s, "layers.0.state_logits: NaN");
    /* Infinities have a clear meaning (kept / dropped) and are accepted. */
    spec_default(&s);
    s.cl[0][0] = -INFINITY;
    s.sl[0][0] = INFINITY;
    expect(&s, NULL);
}
END_TEST

START_TEST(test_sparsity_refuses_missing_extra_and_misshaped_tensors)
{
    spec s;
    spec_default(&s);
    s.drop_tensor = 5; /* layers.1.scan_order */
    expect(&s, "layers.1.scan_order: missing");
    spec_default(&s);
    s.drop_tensor = 0; /* layers.0.channel_logits: layer 0 does not exist then */
    expect(&s, "layers.0");
    spec_default(&s);
    s.extra_tensor = 1;
    expect(&s, "layers.0.bias: unexpected");
    spec_default(&s);
    s.wrong_dtype = 2;
    expect(&s, "layers.0.scan_order: dtype F32, want I32");
    spec_default(&s);
    s.wrong_dtype = 4;
    expect(&s, "layers.1.state_logits: dtype I32, want F32");
    spec_default(&s);
    s.wrong_shape = 4;
    expect(&s, "layers.1.state_logits: shape [5, 3], want [6, 3]");
    spec_default(&s);
    s.wrong_shape = 3;
    expect(&s, "layers.1.channel_logits: shape [5], want [6]");
}
END_TEST

START_TEST(test_sparsity_refuses_wrong_metadata)
{
    spec s;
    spec_default(&s);
    s.format = "yunmin-sparsiti";
    expect(&s, "format");
    spec_default(&s);
    s.format = NULL;
    expect(&s, "format: missing");
    spec_default(&s);
    s.version = "2";
    expect(&s, "version");
    spec_default(&s);
    s.method = NULL;
    expect(&s, "method: missing");
    spec_default(&s);
    s.method = "";
    expect(&s, "method: empty");
}
END_TEST

START_TEST(test_sparsity_refuses_truncated_and_garbage_bytes)
{
    spec s;
    spec_default(&s);
    size_t n;
    uint8_t *buf = spec_bytes(&s, &n);
    for (size_t cut = 0; cut < n; cut += 7) {
        ym_sparsity *sp = (ym_sparsity *)1;
        ck_assert_int_eq(ym_sparsity_parse(buf, cut, &sp, NULL), YM_EFORMAT);
        ck_assert_ptr_null(sp);
    }
    ym_diag d = {0};
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_load("/nonexistent/yunmin.sparsity.safetensors", &sp, &d),
                     YM_EIO);
    ck_assert(strstr(d.msg, "/nonexistent") != NULL);
    free(buf);
}
END_TEST

START_TEST(test_sparsity_new_keeps_everything_in_identity_order)
{
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_new(3, 10, 4, "dense", &sp), YM_OK);
    for (int l = 0; l < 3; l++) {
        ck_assert_int_eq(sp->layers[l].n_kept, 10);
        ck_assert_int_eq(sp->layers[l].n_live, 40);
        for (int d = 0; d < 10; d++)
            ck_assert_int_eq(ym_sparsity_served_channel(sp, l, d), d);
    }
    sp->layers[2].scan_order[0] = 1;
    ym_diag d = {0};
    ck_assert_int_eq(ym_sparsity_finish(sp, &d), YM_EINVAL);
    ck_assert(strstr(d.msg, "layers.2.scan_order") != NULL);
    ym_sparsity_free(sp);
    ck_assert_int_eq(ym_sparsity_new(0, 10, 4, "x", &sp), YM_EINVAL);
    ck_assert_int_eq(ym_sparsity_new(1, 10, 4, "", &sp), YM_EINVAL);
}
END_TEST

/* ---- head profiles (Mamba-2): layers.{l}.head_logits [H], layers.{l}.state_logits [H, N] ---- */

enum { HH = 4 };

typedef struct hspec {
    float hl[L_][HH];
    float sl[L_][HH * NS];
    int drop_tensor;        /* index into the 2*L_ tensors to leave out, or -1 */
    const char *extra_name; /* add an F32 [HH] tensor of this name, or NULL */
    int wrong_dtype;        /* tensor index written as I32, or -1 */
    int wrong_shape;        /* tensor index written with one row less, or -1 */
} hspec;

static void hspec_default(hspec *s)
{
    memset(s, 0, sizeof(*s));
    for (int l = 0; l < L_; l++)
        for (int h = 0; h < HH; h++) {
            s->hl[l][h] = h == l + 1 ? 0.0f : 0.25f * (float)(h + 1); /* head l+1 dropped */
            for (int n = 0; n < NS; n++)
                s->sl[l][h * NS + n] = (h + n) % 3 == 0 ? -1.0f : 2.0f;
        }
    s->drop_tensor = s->wrong_dtype = s->wrong_shape = -1;
}

static uint8_t *hspec_bytes(const hspec *s, size_t *len)
{
    ym_st_wtensor t[2 * L_ + 1];
    char names[2 * L_ + 1][48];
    int nt = 0;
    for (int i = 0; i < 2 * L_; i++) {
        if (i == s->drop_tensor)
            continue;
        int l = i / 2, j = i % 2;
        ym_st_wtensor *w = &t[nt];
        memset(w, 0, sizeof(*w));
        snprintf(names[nt], sizeof(names[nt]), "layers.%d.%s", l,
                 j == 0 ? "head_logits" : "state_logits");
        w->name = names[nt];
        w->n_dim = j == 0 ? 1 : 2;
        w->shape[0] = HH;
        w->shape[1] = NS;
        w->dtype = i == s->wrong_dtype ? YM_DT_I32 : YM_DT_F32;
        w->data = j == 0 ? (const void *)s->hl[l] : (const void *)s->sl[l];
        if (i == s->wrong_shape)
            w->shape[0] = HH - 1;
        nt++;
    }
    if (s->extra_name != NULL) {
        ym_st_wtensor *w = &t[nt];
        memset(w, 0, sizeof(*w));
        snprintf(names[nt], sizeof(names[nt]), "%s", s->extra_name);
        w->name = names[nt];
        w->n_dim = 1;
        w->shape[0] = HH;
        w->dtype = YM_DT_F32;
        w->data = s->hl[0];
        nt++;
    }
    ym_st_meta meta[3] = {{(char *)"format", (char *)"yunmin-sparsity"},
                          {(char *)"version", (char *)"1"},
                          {(char *)"method", (char *)"magnitude"}};
    return written_bytes(t, nt, meta, 3, len);
}

/* Parse s; expect failure whose message contains want (or success when want is NULL: the
 * parsed profile in *out, or freed when out is NULL). */
static void hexpect(const hspec *s, const char *want, ym_sparsity **out)
{
    size_t n;
    uint8_t *buf = hspec_bytes(s, &n);
    ym_sparsity *sp = NULL;
    ym_diag d = {0};
    ym_err err = ym_sparsity_parse(buf, n, &sp, &d);
    free(buf);
    if (want == NULL) {
        ck_assert_msg(err == YM_OK, "%s", d.msg);
        ck_assert_ptr_nonnull(sp);
    } else {
        ck_assert_int_eq(err, YM_EFORMAT);
        ck_assert_ptr_null(sp);
        ck_assert_msg(strstr(d.msg, want) != NULL, "message '%s' lacks '%s'", d.msg, want);
    }
    if (out != NULL)
        *out = sp;
    else
        ym_sparsity_free(sp);
}

START_TEST(test_sparsity_head_profile_parses_and_round_trips)
{
    hspec s;
    hspec_default(&s);
    ym_sparsity *sp = NULL;
    hexpect(&s, NULL, &sp);
    ck_assert_int_eq(sp->kind, YM_SPARSITY_HEADS);
    ck_assert_int_eq(sp->n_layer, L_);
    ck_assert_int_eq(sp->n_head, HH);
    ck_assert_int_eq(sp->d_inner, 0);
    ck_assert_int_eq(sp->d_state, NS);
    ck_assert_int_eq(ym_sparsity_n_unit(sp), HH);
    for (int l = 0; l < L_; l++) {
        const ym_sparsity_layer *L = &sp->layers[l];
        ck_assert_ptr_null(L->channel_logits);
        ck_assert_int_eq(L->n_kept, HH - 1);
        int64_t live = 0;
        for (int h = 0, p = 0; h < HH; h++) {
            /* kept heads in their original order; a logit of exactly 0 drops */
            ck_assert_int_eq(ym_sparsity_served_channel(sp, l, h), h == l + 1 ? -1 : p);
            if (h != l + 1)
                ck_assert_int_eq(L->kept[p++], h);
            for (int n = 0; n < NS; n++) {
                int want = h != l + 1 && (h + n) % 3 != 0;
                ck_assert_int_eq(ym_sparsity_state_kept(sp, l, h, n), want);
                live += want;
            }
        }
        ck_assert_int_eq(L->n_live, live);
    }
    /* written by ym_sparsity_save and read back: the same masks, no scan_order tensor */
    char path[] = "/tmp/ym-sparsity-heads-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ym_diag d = {0};
    ck_assert_msg(ym_sparsity_save(sp, path, NULL, 0, &d) == YM_OK, "%s", d.msg);
    ym_sparsity *back = NULL;
    ck_assert_msg(ym_sparsity_load(path, &back, &d) == YM_OK, "%s", d.msg);
    unlink(path);
    ck_assert_int_eq(back->kind, YM_SPARSITY_HEADS);
    ck_assert_str_eq(back->method, "magnitude");
    for (int l = 0; l < L_; l++) {
        ck_assert_mem_eq(back->layers[l].head_logits, s.hl[l], sizeof(s.hl[l]));
        ck_assert_mem_eq(back->layers[l].state_logits, s.sl[l], sizeof(s.sl[l]));
        ck_assert_int_eq(back->layers[l].n_live, sp->layers[l].n_live);
    }
    ym_sparsity_free(back);
    ym_sparsity_free(sp);
}
END_TEST

START_TEST(test_sparsity_head_profile_refuses_malformations)
{
    hspec s;
    hspec_default(&s);
    s.drop_tensor = 3; /* layers.1.state_logits */
    hexpect(&s, "layers.1.state_logits: missing", NULL);
    hspec_default(&s);
    s.drop_tensor = 0; /* no layer 0: neither kind */
    hexpect(&s, "layers.0.head_logits", NULL);
    hspec_default(&s);
    s.extra_name = "layers.0.scan_order"; /* the channel kind's tensor */
    hexpect(&s, "layers.0.scan_order: unexpected", NULL);
    hspec_default(&s);
    s.extra_name = "layers.0.channel_logits"; /* both kinds: read as channels, heads extra */
    hexpect(&s, "layers.0.head_logits: unexpected", NULL);
    hspec_default(&s);
    s.extra_name = "layers.2.state_logits"; /* a layer past the last */
    hexpect(&s, "layers.2.state_logits: unexpected", NULL);
    hspec_default(&s);
    s.wrong_dtype = 2;
    hexpect(&s, "layers.1.head_logits: dtype I32, want F32", NULL);
    hspec_default(&s);
    s.wrong_shape = 3;
    hexpect(&s, "layers.1.state_logits: shape [3, 3], want [4, 3]", NULL);
    hspec_default(&s);
    s.wrong_shape = 2;
    hexpect(&s, "layers.1.head_logits: shape [3], want [4]", NULL);
    hspec_default(&s);
    s.hl[1][3] = NAN;
    hexpect(&s, "layers.1.head_logits: NaN at [3]", NULL);
    hspec_default(&s);
    s.sl[0][5] = NAN;
    hexpect(&s, "layers.0.state_logits: NaN at [1, 2]", NULL);
}
END_TEST

START_TEST(test_sparsity_head_profile_checks_the_model)
{
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_new_heads(2, 4, 8, "none", &sp), YM_OK);
    ck_assert_int_eq(sp->layers[1].n_kept, 4);
    ck_assert_int_eq(sp->layers[1].n_live, 32);
    ym_config c = {.arch = YM_ARCH_MAMBA2, .n_layer = 2, .n_head = 4, .d_state = 8,
                   .d_inner = 256, .head_dim = 64};
    ym_diag d = {0};
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_OK);
    c.n_head = 5;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "4 heads, the model 5") != NULL, "%s", d.msg);
    c.n_head = 4;
    c.d_state = 16;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "d_state 8, the model 16") != NULL, "%s", d.msg);
    c.d_state = 8;
    c.n_layer = 3;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "2 layers, the model 3") != NULL, "%s", d.msg);
    c.n_layer = 2;
    c.arch = YM_ARCH_MAMBA1;
    ck_assert_int_eq(ym_sparsity_check(sp, &c, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "heads") != NULL, "%s", d.msg);
    ym_sparsity_free(sp);
    ck_assert_int_eq(ym_sparsity_new_heads(1, 0, 8, "x", &sp), YM_EINVAL);
    ck_assert_int_eq(ym_sparsity_new_heads(1, 4, 8, "", &sp), YM_EINVAL);
}
END_TEST

Suite *sparsity_suite(void)
{
    Suite *s = suite_create("sparsity");
    TCase *tc = tcase_create("profile");
    tcase_add_test(tc, test_sparsity_parses_and_derives_served_layout);
    tcase_add_test(tc, test_sparsity_refuses_non_permutation_order);
    tcase_add_test(tc, test_sparsity_refuses_nan_logits);
    tcase_add_test(tc, test_sparsity_refuses_missing_extra_and_misshaped_tensors);
    tcase_add_test(tc, test_sparsity_refuses_wrong_metadata);
    tcase_add_test(tc, test_sparsity_refuses_truncated_and_garbage_bytes);
    tcase_add_test(tc, test_sparsity_new_keeps_everything_in_identity_order);
    tcase_add_test(tc, test_sparsity_head_profile_parses_and_round_trips);
    tcase_add_test(tc, test_sparsity_head_profile_refuses_malformations);
    tcase_add_test(tc, test_sparsity_head_profile_checks_the_model);
    suite_add_tcase(s, tc);
    return s;
}
