/* tests/unit/test_state.c - state objects: reset, copy, serialize round trip, the serialized
 * bytes against tests/fixtures/make_state_fixtures.py's (version 2 written, version 1 still
 * read), and refusal of damaged or foreign serialized states. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/state.h"
#include "testutil.h"

static ym_config cfg_of(int n_layer, int d_model, int d_state, int d_conv)
{
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.n_layer = n_layer;
    c.d_model = d_model;
    c.d_inner = 2 * d_model;
    c.d_state = d_state;
    c.d_conv = d_conv;
    return c;
}

static void fill(ym_state_t *s, float base)
{
    size_t nc = (size_t)s->n_layer * s->d_inner * (s->d_conv - 1);
    size_t ns = (size_t)s->n_layer * s->d_inner * s->d_state;
    for (size_t i = 0; i < nc; i++)
        s->conv[i] = base + (float)i * 0.25f;
    for (size_t i = 0; i < ns; i++)
        s->ssm[i] = base - (float)i * 0.5f;
    s->n_tokens = 77;
}

START_TEST(test_state_serialize_round_trip_and_copy)
{
    ym_config c = cfg_of(3, 8, 5, 4);
    ym_state_t *a = NULL, *b = NULL;
    ck_assert_int_eq(ym_state_new(&c, &a), YM_OK);
    ck_assert_int_eq(ym_state_new(&c, &b), YM_OK);
    fill(a, 1.0f);
    size_t n = ym_state_serialized_size(a), w = 0;
    ck_assert_uint_eq(n, 48 + ym_config_state_bytes(&c));
    unsigned char *buf = malloc(n);
    ck_assert_int_eq(ym_state_serialize(a, buf, n - 1, &w), YM_EINVAL);
    ck_assert_int_eq(ym_state_serialize(a, buf, n, &w), YM_OK);
    ck_assert_uint_eq(w, n);
    ck_assert_int_eq(ym_state_deserialize(b, buf, n, NULL), YM_OK);
    ck_assert_int_eq(b->n_tokens, 77);
    ck_assert_mem_eq(a->ssm, b->ssm, sizeof(float) * 3 * 16 * 5);
    ck_assert_mem_eq(a->conv, b->conv, sizeof(float) * 3 * 16 * 3);
    ym_state_reset(b);
    ck_assert_int_eq(b->n_tokens, 0);
    ck_assert(b->ssm[7] == 0.0f && b->conv[5] == 0.0f);
    ck_assert_int_eq(ym_state_copy(b, a), YM_OK);
    ck_assert_mem_eq(a->ssm, b->ssm, sizeof(float) * 3 * 16 * 5);
    free(buf);
    ym_state_free(a);
    ym_state_free(b);
}
END_TEST

START_TEST(test_state_deserialize_refuses_damage_and_leaves_state_alone)
{
    ym_config c = cfg_of(2, 4, 3, 3), other = cfg_of(2, 4, 4, 3);
    ym_state_t *a = NULL, *b = NULL, *o = NULL;
    ck_assert_int_eq(ym_state_new(&c, &a), YM_OK);
    ck_assert_int_eq(ym_state_new(&c, &b), YM_OK);
    ck_assert_int_eq(ym_state_new(&other, &o), YM_OK);
    fill(a, 2.0f);
    size_t n = ym_state_serialized_size(a), w;
    unsigned char *buf = malloc(n);
    ck_assert_int_eq(ym_state_serialize(a, buf, n, &w), YM_OK);
    ym_diag d = {0};
    /* truncated */
    ck_assert_int_eq(ym_state_deserialize(b, buf, n - 4, &d), YM_EFORMAT);
    ck_assert_int_eq(ym_state_deserialize(b, buf, 10, &d), YM_EFORMAT);
    /* a flipped payload bit */
    buf[n - 1] ^= 0x10;
    ck_assert_int_eq(ym_state_deserialize(b, buf, n, &d), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(d.msg, "checksum"));
    buf[n - 1] ^= 0x10;
    /* bad magic */
    buf[0] ^= 1;
    ck_assert_int_eq(ym_state_deserialize(b, buf, n, &d), YM_EFORMAT);
    buf[0] ^= 1;
    /* another model's dimensions */
    ck_assert_int_eq(ym_state_deserialize(o, buf, n, &d), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(d.msg, "dims"));
    ck_assert_int_eq(ym_state_copy(o, a), YM_EINVAL);
    /* nothing was written into b */
    ck_assert_int_eq(b->n_tokens, 0);
    ck_assert(b->ssm[0] == 0.0f);
    free(buf);
    ym_state_free(a);
    ym_state_free(b);
    ym_state_free(o);
}
END_TEST

/* The fixtures' state: n_layer 2, d_inner 4, d_conv 3, d_state 2, float i = 0.5 * i - 3 over
 * conv then ssm, n_tokens 77 (tests/fixtures/make_state_fixtures.py). */
static ym_state_t *fixture_state(void)
{
    ym_config c = cfg_of(2, 2, 2, 3);
    ym_state_t *s = NULL;
    ck_assert_int_eq(ym_state_new(&c, &s), YM_OK);
    size_t nc = 2 * 4 * 2, ns = 2 * 4 * 2;
    for (size_t i = 0; i < nc; i++)
        s->conv[i] = 0.5f * (float)i - 3.0f;
    for (size_t i = 0; i < ns; i++)
        s->ssm[i] = 0.5f * (float)(nc + i) - 3.0f;
    s->n_tokens = 77;
    return s;
}

static unsigned char *read_fixture(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: run tests/fixtures/make_state_fixtures.py", path);
    static unsigned char buf[4096];
    *n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    unsigned char *p = malloc(*n);
    memcpy(p, buf, *n);
    return p;
}

START_TEST(test_state_serialize_writes_version_2_as_the_reference_does)
{
    ym_state_t *s = fixture_state();
    size_t n_ref, w = 0;
    unsigned char *ref = read_fixture(YM_FIXTURE("state/v2.bin"), &n_ref);
    ck_assert_uint_eq(ym_state_serialized_size(s), n_ref);
    unsigned char *buf = malloc(n_ref);
    ck_assert_int_eq(ym_state_serialize(s, buf, n_ref, &w), YM_OK);
    ck_assert_uint_eq(buf[4], 2);
    ck_assert_mem_eq(buf, ref, n_ref); /* XXH3-64 checksum included */
    free(buf);
    free(ref);
    ym_state_free(s);
}
END_TEST

START_TEST(test_state_deserialize_reads_version_1_and_2)
{
    ym_state_t *want = fixture_state(), *got = NULL;
    ck_assert_int_eq(ym_state_new_like(want, &got), YM_OK);
    const char *files[2] = {YM_FIXTURE("state/v1.bin"), YM_FIXTURE("state/v2.bin")};
    for (int v = 0; v < 2; v++) {
        size_t n;
        unsigned char *buf = read_fixture(files[v], &n);
        ym_state_reset(got);
        ym_diag d = {0};
        ck_assert_msg(ym_state_deserialize(got, buf, n, &d) == YM_OK, "%s: %s", files[v], d.msg);
        ck_assert_int_eq(got->n_tokens, 77);
        ck_assert_mem_eq(got->conv, want->conv, sizeof(float) * 16);
        ck_assert_mem_eq(got->ssm, want->ssm, sizeof(float) * 16);
        free(buf);
    }
    ym_state_free(want);
    ym_state_free(got);
}
END_TEST

START_TEST(test_state_deserialize_refuses_a_bad_checksum_in_either_version)
{
    ym_state_t *s = fixture_state();
    const char *files[2] = {YM_FIXTURE("state/v1.bin"), YM_FIXTURE("state/v2.bin")};
    for (int v = 0; v < 2; v++) {
        size_t n;
        unsigned char *buf = read_fixture(files[v], &n);
        ym_diag d = {0};
        /* A flipped payload bit, then a flipped checksum bit (high and low word). */
        size_t at[3] = {n - 7, 40 + 7, 40};
        for (int k = 0; k < 3; k++) {
            buf[at[k]] ^= 0x04;
            ym_state_reset(s);
            ck_assert_int_eq(ym_state_deserialize(s, buf, n, &d), YM_EFORMAT);
            ck_assert_ptr_nonnull(strstr(d.msg, "checksum"));
            ck_assert_int_eq(s->n_tokens, 0); /* left unchanged */
            buf[at[k]] ^= 0x04;
        }
        /* A version-1 file relabelled 2 (or the reverse) fails the other checksum. */
        buf[4] = (unsigned char)(v == 0 ? 2 : 1);
        ck_assert_int_eq(ym_state_deserialize(s, buf, n, &d), YM_EFORMAT);
        ck_assert_ptr_nonnull(strstr(d.msg, "checksum"));
        /* Versions other than 1 and 2 are refused by name. */
        buf[4] = 3;
        ck_assert_int_eq(ym_state_deserialize(s, buf, n, &d), YM_EFORMAT);
        ck_assert_ptr_nonnull(strstr(d.msg, "version 3"));
        buf[4] = 0;
        ck_assert_int_eq(ym_state_deserialize(s, buf, n, &d), YM_EFORMAT);
        free(buf);
    }
    ym_state_free(s);
}
END_TEST

Suite *state_suite(void)
{
    Suite *s = suite_create("state");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_state_serialize_round_trip_and_copy);
    tcase_add_test(tc, test_state_deserialize_refuses_damage_and_leaves_state_alone);
    tcase_add_test(tc, test_state_serialize_writes_version_2_as_the_reference_does);
    tcase_add_test(tc, test_state_deserialize_reads_version_1_and_2);
    tcase_add_test(tc, test_state_deserialize_refuses_a_bad_checksum_in_either_version);
    suite_add_tcase(s, tc);
    return s;
}
