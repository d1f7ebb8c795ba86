/* tests/unit/test_utf8.c - engine/utf8 against CPython's lossy decoder, and engine/buf.
 *
 * tests/fixtures/utf8_cases.json comes from tests/fixtures/make_utf8_cases.py: byte strings and
 * bytes.decode("utf-8", "replace") of each (one U+FFFD per maximal invalid subpart). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/utf8.h"
#include "testutil.h"

static size_t unhex(const char *h, unsigned char *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
    return n;
}

START_TEST(test_utf8_lossy_and_valid_match_cpython)
{
    json_error_t je;
    json_t *cases = json_load_file(YM_FIXTURE("utf8_cases.json"), 0, &je);
    ck_assert_msg(cases != NULL, "utf8_cases.json: %s", je.text);
    ck_assert_int_gt(json_array_size(cases), 500);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        unsigned char in[64], want[256];
        size_t n = unhex(json_string_value(json_object_get(c, "in")), in);
        size_t wn = unhex(json_string_value(json_object_get(c, "out")), want);
        ck_assert_int_eq(ym_utf8_valid(in, n), json_is_true(json_object_get(c, "valid")));
        /* Whole at once. */
        ym_buf out = YM_BUF_INIT;
        ym_err err;
        ck_assert_uint_eq(ym_utf8_lossy(&out, in, n, true, &err), 0);
        ck_assert_int_eq(err, YM_OK);
        ck_assert_msg(out.len == wn && memcmp(out.p, want, wn) == 0, "case %zu: %s", i,
                      json_string_value(json_object_get(c, "in")));
        /* Byte by byte, carrying an unfinished tail as a stream does: the same text. */
        ym_buf stream = YM_BUF_INIT;
        unsigned char tail[8];
        size_t nt = 0;
        for (size_t k = 0; k < n; k++) {
            tail[nt++] = in[k];
            size_t left = ym_utf8_lossy(&stream, tail, nt, false, &err);
            memmove(tail, tail + nt - left, left);
            nt = left;
            ck_assert_uint_lt(nt, 4);
        }
        ym_utf8_lossy(&stream, tail, nt, true, &err);
        ck_assert_msg(stream.len == wn && memcmp(stream.p, want, wn) == 0, "case %zu streamed",
                      i);
        ym_buf_deinit(&out);
        ym_buf_deinit(&stream);
    }
    json_decref(cases);
}
END_TEST

START_TEST(test_buf_grows_from_caller_storage_and_drops_front)
{
    char stack[8];
    ym_buf b;
    ym_buf_init_with(&b, stack, sizeof(stack));
    ck_assert_int_eq(ym_buf_puts(&b, "abc"), YM_OK);
    ck_assert_ptr_eq(b.p, stack); /* fits: still the caller's storage */
    ck_assert_int_eq(ym_buf_printf(&b, "-%d-%s", 42, "xyz"), YM_OK);
    ck_assert_ptr_ne(b.p, stack); /* outgrew it: on the heap, contents kept */
    ck_assert_str_eq(b.p, "abc-42-xyz");
    ym_buf_drop_front(&b, 4);
    ck_assert_str_eq(b.p, "42-xyz");
    ck_assert_uint_eq(b.len, 6);
    size_t n;
    char *s = ym_buf_take(&b, &n);
    ck_assert_str_eq(s, "42-xyz");
    ck_assert_uint_eq(n, 6);
    ck_assert_ptr_null(b.p);
    free(s);
    ck_assert_int_eq(ym_buf_put(&b, NULL, 0), YM_OK);
    ck_assert_str_eq(b.p, "");
    ck_assert_int_eq(ym_buf_reserve(&b, SIZE_MAX), YM_ENOMEM);
    ck_assert_int_eq(b.oom, 1);
    ym_buf_deinit(&b);
    ym_buf_deinit(NULL);
}
END_TEST

/* Code points counted and found as Python's len() and indexing see them:
 * "a\u00e9\u20ac\U0001F600" is 1 + 2 + 3 + 4 bytes, 4 code points. */
START_TEST(test_utf8_count_and_offset)
{
    const unsigned char s[] = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
    size_t n = sizeof(s) - 1;
    ck_assert_uint_eq(ym_utf8_count(s, n), 4);
    const size_t want[] = {0, 1, 3, 6, 10, 10};
    for (size_t ci = 0; ci < 6; ci++)
        ck_assert_uint_eq(ym_utf8_offset(s, n, ci), want[ci]);
    ck_assert_uint_eq(ym_utf8_count(s, 0), 0);
    ck_assert_uint_eq(ym_utf8_offset(s, 0, 0), 0);
}
END_TEST

/* Whole streams: contents kept byte for byte across many doublings, and the limit exact. */
START_TEST(test_buf_read_stream_and_limit)
{
    enum { N = 100003 };
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < N; i++)
        fputc((i * 7 + i / 256) & 0xff, f);
    for (int limit = N - 1; limit <= N; limit++) {
        rewind(f);
        ym_buf b = YM_BUF_INIT;
        ck_assert_int_eq(ym_buf_read(&b, f, (size_t)limit), limit == N ? YM_OK : YM_ETOOBIG);
        if (limit == N) {
            ck_assert_uint_eq(b.len, N);
            ck_assert_int_eq(b.p[N], '\0');
            for (int i = 0; i < N; i++)
                ck_assert_int_eq((unsigned char)b.p[i], (i * 7 + i / 256) & 0xff);
        }
        ym_buf_deinit(&b);
    }
    fclose(f);
    FILE *empty = tmpfile();
    ym_buf b = YM_BUF_INIT;
    ck_assert_int_eq(ym_buf_puts(&b, "x"), YM_OK);
    ck_assert_int_eq(ym_buf_read(&b, empty, SIZE_MAX), YM_OK); /* appends nothing */
    ck_assert_str_eq(b.p, "x");
    ym_buf_deinit(&b);
    fclose(empty);
}
END_TEST

Suite *utf8_suite(void)
{
    Suite *s = suite_create("utf8");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_utf8_lossy_and_valid_match_cpython);
    tcase_add_test(tc, test_buf_grows_from_caller_storage_and_drops_front);
    tcase_add_test(tc, test_buf_read_stream_and_limit);
    tcase_add_test(tc, test_utf8_count_and_offset);
    suite_add_tcase(s, tc);
    return s;
}
