/* tests/unit/test_textout.c - streaming detokenization and stop strings, on the real GPT-NeoX
 * tokenizer. The reference is ym_tok_decode of all ids (itself checked against HF in
 * test_tokenizer.c); ids come from the HF-made cases in tests/fixtures/gpt-neox/cases.json. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/textout.h"
#include "engine/tokenizer.h"
#include "testutil.h"

static ym_tok_t *tok;
static json_t *cases;

static void setup(void)
{
    ym_diag diag = {0};
    ck_assert_msg(ym_tok_load(YM_FIXTURE("gpt-neox/tokenizer.json"), &tok, &diag) == YM_OK,
                  "tokenizer: %s", diag.msg);
    json_error_t err;
    cases = json_load_file(YM_FIXTURE("gpt-neox/cases.json"), 0, &err);
    ck_assert_msg(cases != NULL, "cases.json: %s", err.text);
}

static void teardown(void)
{
    ym_tok_free(tok);
    tok = NULL;
    json_decref(cases);
    cases = NULL;
}

/* The ids of the case whose text is `text` (a fixture must have it). */
static ym_ids case_ids(const char *text)
{
    ym_ids ids = {0};
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(cases, "cases"), i, c)
    {
        if (strcmp(json_string_value(json_object_get(c, "text")), text) == 0) {
            size_t j;
            json_t *v;
            json_array_foreach(json_object_get(c, "ids"), j, v)
                ck_assert_int_eq(ym_ids_push(&ids, (int32_t)json_integer_value(v)), YM_OK);
            return ids;
        }
    }
    ck_abort_msg("no case with text \"%s\" in cases.json", text);
    return ids;
}

/* Strict UTF-8 (RFC 3629), written plainly. */
static int valid_utf8(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

typedef struct stream {
    char *text; /* everything emitted, pushes and finish */
    size_t n;
    size_t n_pushed; /* of which from pushes */
    int stopped_at;  /* index of the push that returned 1, or -1 */
} stream;

/* Feed ids one at a time (stopping when a push reports a stop), then finish. Every piece
 * must be valid UTF-8. */
static stream run_stream(const int32_t *ids, size_t n, const char *const *stops, int n_stops)
{
    ym_textout_t *to = NULL;
    ck_assert_int_eq(ym_textout_new(tok, stops, n_stops, &to), YM_OK);
    stream st = {.text = malloc(1), .stopped_at = -1};
    const char *piece;
    size_t len;
    for (size_t i = 0; i < n; i++) {
        int stop = ym_textout_push(to, ids[i], &piece, &len);
        ck_assert_msg(valid_utf8(piece, len), "piece after id %d is not valid UTF-8", ids[i]);
        st.text = realloc(st.text, st.n + len + 1);
        memcpy(st.text + st.n, piece, len);
        st.n += len;
        if (stop) {
            st.stopped_at = (int)i;
            break;
        }
    }
    st.n_pushed = st.n;
    ym_textout_finish(to, &piece, &len);
    ck_assert(valid_utf8(piece, len));
    if (st.stopped_at >= 0)
        ck_assert_uint_eq(len, 0);
    st.text = realloc(st.text, st.n + len + 1);
    memcpy(st.text + st.n, piece, len);
    st.n += len;
    st.text[st.n] = '\0';
    if (st.stopped_at < 0)
        ck_assert_ptr_null(ym_textout_stop(to));
    ym_textout_free(to);
    return st;
}

static char *decode(const int32_t *ids, size_t n, size_t *len)
{
    char *text = NULL;
    ck_assert_int_eq(ym_tok_decode(tok, ids, n, &text, len), YM_OK);
    return text;
}

static void check_stream_equals_decode(const int32_t *ids, size_t n, const char *what)
{
    size_t want_len;
    char *want = decode(ids, n, &want_len);
    stream st = run_stream(ids, n, NULL, 0);
    ck_assert_msg(st.n == want_len && memcmp(st.text, want, want_len) == 0,
                  "%s: streamed \"%s\" (%zu bytes), decode \"%s\" (%zu bytes)", what, st.text,
                  st.n, want, want_len);
    free(st.text);
    free(want);
}

START_TEST(test_textout_streamed_cases_equal_decode)
{
    size_t i;
    json_t *c;
    ym_ids all = {0};
    json_array_foreach(json_object_get(cases, "cases"), i, c)
    {
        ym_ids ids = case_ids(json_string_value(json_object_get(c, "text")));
        check_stream_equals_decode(ids.v, ids.n, json_string_value(json_object_get(c, "text")));
        for (size_t k = 0; k < ids.n; k++)
            ck_assert_int_eq(ym_ids_push(&all, ids.v[k]), YM_OK);
        ym_ids_deinit(&ids);
    }
    /* All cases as one stream, and reversed: the reversal splits and reorders multi-byte
     * characters, so invalid sequences must become U+FFFD exactly as decode makes them. */
    check_stream_equals_decode(all.v, all.n, "all cases");
    for (size_t a = 0, b = all.n - 1; a < b; a++, b--) {
        int32_t t = all.v[a];
        all.v[a] = all.v[b];
        all.v[b] = t;
    }
    check_stream_equals_decode(all.v, all.n, "all cases reversed");
    ym_ids_deinit(&all);
}
END_TEST

/* The sequence unit's end rules: stepping the reversed cases (split characters included)
 * with a length limit gives decode() of exactly max_tokens ids, the held-back bytes released
 * with the last one; end-of-text ends the sequence with no text of its own; a stop string
 * ends it as ym_textout_push does. */
START_TEST(test_textout_step_applies_length_eos_and_stop_rules)
{
    ym_ids all = {0};
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(cases, "cases"), i, c)
    {
        ym_ids ids = case_ids(json_string_value(json_object_get(c, "text")));
        for (size_t k = 0; k < ids.n; k++)
            ck_assert_int_eq(ym_ids_push(&all, ids.v[k]), YM_OK);
        ym_ids_deinit(&ids);
    }
    for (size_t a = 0, b = all.n - 1; a < b; a++, b--) {
        int32_t t = all.v[a];
        all.v[a] = all.v[b];
        all.v[b] = t;
    }
    const int32_t eos = ym_tok_eos_id(tok);
    ck_assert_int_ge(eos, 0);
    size_t limits[] = {1, 2, 7, 31, all.n};
    for (size_t li = 0; li < sizeof(limits) / sizeof(limits[0]); li++) {
        size_t max = limits[li];
        ym_textout_t *to;
        ck_assert_int_eq(ym_textout_new(tok, NULL, 0, &to), YM_OK);
        ym_textout_set_rules(to, eos, 0, (int64_t)max);
        char *got = calloc(1, 1);
        size_t got_len = 0, k = 0;
        ym_seq_end end = YM_SEQ_GOING;
        for (; k < all.n && end == YM_SEQ_GOING; k++) {
            ck_assert_int_ne(all.v[k], eos);
            const char *t;
            size_t n;
            end = ym_textout_step(to, all.v[k], &t, &n);
            got = realloc(got, got_len + n + 1);
            memcpy(got + got_len, t, n);
            got_len += n;
        }
        ck_assert_int_eq(end, YM_SEQ_LENGTH);
        ck_assert_uint_eq(k, max);
        ck_assert_int_eq(ym_textout_n_tokens(to), (int64_t)max);
        size_t want_len;
        char *want = decode(all.v, max, &want_len);
        ck_assert_msg(got_len == want_len && memcmp(got, want, want_len) == 0,
                      "max_tokens %zu: stepped text differs from decode", max);
        free(want);
        free(got);
        ym_textout_free(to);
    }
    /* End-of-text: the held-back part of a split character comes out, the token adds none. */
    ym_textout_t *to;
    ck_assert_int_eq(ym_textout_new(tok, NULL, 0, &to), YM_OK);
    ym_textout_set_rules(to, eos, 0, -1);
    const char *t;
    size_t n, total = 0;
    for (size_t k = 0; k < 5; k++) {
        ck_assert_int_eq(ym_textout_step(to, all.v[k], &t, &n), YM_SEQ_GOING);
        total += n;
    }
    ck_assert_int_eq(ym_textout_step(to, eos, &t, &n), YM_SEQ_EOS);
    size_t want_len;
    char *want = decode(all.v, 5, &want_len);
    ck_assert_uint_eq(total + n, want_len);
    free(want);
    ym_textout_free(to);
    /* ignore_eos: the end-of-text token is text like any other. */
    ck_assert_int_eq(ym_textout_new(tok, NULL, 0, &to), YM_OK);
    ym_textout_set_rules(to, eos, 1, -1);
    ck_assert_int_eq(ym_textout_step(to, eos, &t, &n), YM_SEQ_GOING);
    ym_textout_free(to);
    /* A stop string in the text ends it with YM_SEQ_STOP, the stop not emitted. */
    size_t dl;
    char *dtext = decode(all.v, 40, &dl);
    char stop[4] = {0};
    size_t at = dl / 2;
    while (at < dl && ((unsigned char)dtext[at] & 0x80))
        at++;
    if (at + 2 < dl && !((unsigned char)dtext[at + 1] & 0x80) &&
        !((unsigned char)dtext[at + 2] & 0x80)) {
        memcpy(stop, dtext + at, 3);
        size_t stop_at = 0; /* its first occurrence (at `at` or before) */
        while (memcmp(dtext + stop_at, stop, 3) != 0)
            stop_at++;
        const char *stops[] = {stop};
        ck_assert_int_eq(ym_textout_new(tok, stops, 1, &to), YM_OK);
        ym_textout_set_rules(to, eos, 0, 40);
        ym_seq_end end = YM_SEQ_GOING;
        size_t out_len = 0;
        for (size_t k = 0; k < 40 && end == YM_SEQ_GOING; k++) {
            end = ym_textout_step(to, all.v[k], &t, &n);
            out_len += n;
        }
        ck_assert_int_eq(end, YM_SEQ_STOP);
        ck_assert_uint_eq(out_len, stop_at);
        ym_textout_free(to);
    }
    free(dtext);
    ym_ids_deinit(&all);
}
END_TEST

START_TEST(test_textout_unfinished_character_becomes_replacement_at_finish)
{
    ym_ids ids = case_ids(" this is 🦙.cpp");
    /* 🦙 is four bytes spread over three tokens; stop after each of them. */
    for (size_t n = 1; n <= ids.n; n++)
        check_stream_equals_decode(ids.v, n, "prefix of \" this is 🦙.cpp\"");
    ck_assert_uint_ge(ids.n, 5);
    stream st = run_stream(ids.v, 4, NULL, 0);
    ck_assert_uint_ge(st.n, 3);
    ck_assert_mem_eq(st.text + st.n - 3, "\xEF\xBF\xBD", 3); /* the cut-off llama */
    ck_assert(st.n_pushed < st.n);                           /* held back until finish */
    free(st.text);
    ym_ids_deinit(&ids);
}
END_TEST

START_TEST(test_textout_stop_spanning_tokens_is_found_and_not_emitted)
{
    ym_ids ids = case_ids("Hello, world!");
    const char *stops[] = {"o, w"};
    stream st = run_stream(ids.v, ids.n, stops, 1);
    ck_assert_str_eq(st.text, "Hell");
    ck_assert_int_eq(st.stopped_at, 2); /* "Hello" "," " world": complete at the third */
    free(st.text);

    /* The text before a possible stop goes out as soon as it is certain. */
    ym_textout_t *to = NULL;
    const char *piece;
    size_t len;
    ck_assert_int_eq(ym_textout_new(tok, stops, 1, &to), YM_OK);
    ck_assert_int_eq(ym_textout_push(to, ids.v[0], &piece, &len), 0);
    ck_assert_uint_eq(len, 4);
    ck_assert_mem_eq(piece, "Hell", 4);
    ck_assert_int_eq(ym_textout_push(to, ids.v[1], &piece, &len), 0);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(ym_textout_push(to, ids.v[2], &piece, &len), 1);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(ym_textout_stop(to), "o, w");
    /* After a stop nothing more comes out. */
    ck_assert_int_eq(ym_textout_push(to, ids.v[3], &piece, &len), 1);
    ck_assert_uint_eq(len, 0);
    ym_textout_finish(to, &piece, &len);
    ck_assert_uint_eq(len, 0);
    ym_textout_free(to);
    ym_ids_deinit(&ids);
}
END_TEST

START_TEST(test_textout_stop_across_split_characters)
{
    ym_ids ids = case_ids(" this is 🦙.cpp");
    const char *s1[] = {"🦙."};
    stream st = run_stream(ids.v, ids.n, s1, 1);
    ck_assert_str_eq(st.text, " this is ");
    free(st.text);
    const char *s2[] = {"is 🦙"};
    st = run_stream(ids.v, ids.n, s2, 1);
    ck_assert_str_eq(st.text, " this ");
    free(st.text);
    const char *s3[] = {"\xF0\x9F\xA6\x99.cp"}; /* the same llama, as bytes */
    st = run_stream(ids.v, ids.n, s3, 1);
    ck_assert_str_eq(st.text, " this is ");
    free(st.text);
    ym_ids_deinit(&ids);
}
END_TEST

START_TEST(test_textout_earliest_of_several_stops_wins)
{
    ym_ids ids = case_ids("Hello, world!");
    const char *stops[] = {"world", "", "llo", "!"};
    ym_textout_t *to = NULL;
    ck_assert_int_eq(ym_textout_new(tok, stops, 4, &to), YM_OK);
    const char *piece;
    size_t len;
    ck_assert_int_eq(ym_textout_push(to, ids.v[0], &piece, &len), 1);
    ck_assert_uint_eq(len, 2);
    ck_assert_mem_eq(piece, "He", 2);
    ck_assert_str_eq(ym_textout_stop(to), "llo");
    ym_textout_free(to);
    ym_ids_deinit(&ids);
}
END_TEST

START_TEST(test_textout_uncompleted_stop_is_flushed_at_finish)
{
    ym_ids ids = case_ids("Hello world");
    const char *stops[] = {" world!", "Hello world and"};
    stream st = run_stream(ids.v, ids.n, stops, 2);
    ck_assert_int_eq(st.stopped_at, -1);
    ck_assert_str_eq(st.text, "Hello world");
    ck_assert_uint_eq(st.n_pushed, 0); /* all of it might have been a stop: held */
    free(st.text);
    const char *stops2[] = {" world!"};
    st = run_stream(ids.v, ids.n, stops2, 1);
    ck_assert_str_eq(st.text, "Hello world");
    ck_assert_uint_eq(st.n_pushed, 5); /* "Hello" went out; " world" was held */
    free(st.text);
    ym_ids_deinit(&ids);
}
END_TEST

START_TEST(test_textout_empty_stops_are_ignored)
{
    ym_ids ids = case_ids("Hello, world!");
    const char *stops[] = {"", ""};
    stream st = run_stream(ids.v, ids.n, stops, 2);
    ck_assert_str_eq(st.text, "Hello, world!");
    ck_assert_uint_eq(st.n_pushed, st.n); /* nothing to hold back for */
    free(st.text);
    ym_ids_deinit(&ids);
    ym_textout_free(NULL);
}
END_TEST

Suite *textout_suite(void)
{
    Suite *s = suite_create("textout");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_textout_streamed_cases_equal_decode);
    tcase_add_test(tc, test_textout_unfinished_character_becomes_replacement_at_finish);
    tcase_add_test(tc, test_textout_stop_spanning_tokens_is_found_and_not_emitted);
    tcase_add_test(tc, test_textout_stop_across_split_characters);
    tcase_add_test(tc, test_textout_earliest_of_several_stops_wins);
    tcase_add_test(tc, test_textout_uncompleted_stop_is_flushed_at_finish);
    tcase_add_test(tc, test_textout_empty_stops_are_ignored);
    tcase_add_test(tc, test_textout_step_applies_length_eos_and_stop_rules);
    suite_add_tcase(s, tc);
    return s;
}
