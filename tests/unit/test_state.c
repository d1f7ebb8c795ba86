/* tests/unit/test_state.c - state objects: reset, copy, serialize round trip, and refusal of
 * damaged or foreign serialized states. */
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

Suite *state_suite(void)
{
    Suite *s = suite_create("state");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_state_serialize_round_trip_and_copy);
    tcase_add_test(tc, test_state_deserialize_refuses_damage_and_leaves_state_alone);
    suite_add_tcase(s, tc);
    return s;
}
