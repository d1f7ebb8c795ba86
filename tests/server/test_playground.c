/* tests/server/test_playground.c - the embedded playground files and the If-None-Match check.
 *
 * The files must be byte for byte the ones in server/playground/, each with the Content-Type
 * of its kind and an ETag that is the start of its SHA-256 as libsodium computes it (not the
 * build script's hashlib); If-None-Match follows RFC 9110 §13.1.2's weak comparison, with the
 * RFC's own forms as cases. */
#include <check.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/playground.h"

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)n + 1);
    ck_assert(p != NULL);
    ck_assert_uint_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

START_TEST(test_playground_assets_are_the_files_with_their_hash)
{
    static const struct {
        const char *path, *file, *type;
    } want[] = {
        {"/", "index.html", "text/html; charset=utf-8"},
        {"/playground/app.js", "app.js", "text/javascript; charset=utf-8"},
        {"/playground/style.css", "style.css", "text/css; charset=utf-8"},
    };
    ck_assert_int_eq(sodium_init() >= 0, 1);
    ck_assert_uint_eq(ym_playground_n_assets, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const ym_asset *a = ym_playground_find(want[i].path);
        ck_assert_msg(a != NULL, "%s not served", want[i].path);
        ck_assert_str_eq(a->type, want[i].type);
        char path[1024];
        snprintf(path, sizeof(path), "%s/server/playground/%s", YM_SOURCE_ROOT, want[i].file);
        size_t len;
        unsigned char *disk = read_all(path, &len);
        ck_assert_uint_eq(a->len, len);
        ck_assert_int_eq(memcmp(a->data, disk, len), 0);
        ck_assert_int_eq(a->data[len], 0);
        unsigned char h[crypto_hash_sha256_BYTES];
        crypto_hash_sha256(h, disk, len);
        char hex[2 * sizeof(h) + 1], etag[40];
        sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
        snprintf(etag, sizeof(etag), "\"%.32s\"", hex);
        ck_assert_str_eq(a->etag, etag);
        free(disk);
    }
    ck_assert_ptr_null(ym_playground_find("/playground/"));
    ck_assert_ptr_null(ym_playground_find("/playground/index.html"));
    ck_assert_ptr_null(ym_playground_find("/playground/app.js?x"));
    ck_assert_ptr_null(ym_playground_find(""));
    ck_assert_ptr_null(ym_playground_find(NULL));
}
END_TEST

START_TEST(test_etag_match_follows_rfc9110)
{
    const char *e = "\"xyzzy\"";
    /* RFC 9110 §13.1.2's examples of the field, and weak comparison (§8.8.3.2). */
    ck_assert_int_eq(ym_etag_match("\"xyzzy\"", e), 1);
    ck_assert_int_eq(ym_etag_match("\"xyzzy\", \"r2d2xxxx\", \"c3piozzzz\"", e), 1);
    ck_assert_int_eq(ym_etag_match("\"r2d2xxxx\", \"c3piozzzz\", \"xyzzy\"", e), 1);
    ck_assert_int_eq(ym_etag_match("W/\"xyzzy\"", e), 1);
    ck_assert_int_eq(ym_etag_match("W/\"a\",W/\"xyzzy\"", e), 1);
    ck_assert_int_eq(ym_etag_match("*", e), 1);
    ck_assert_int_eq(ym_etag_match(" * ", e), 1);
    ck_assert_int_eq(ym_etag_match("\"r2d2xxxx\", \"c3piozzzz\"", e), 0);
    ck_assert_int_eq(ym_etag_match("\"xyzz\"", e), 0);
    ck_assert_int_eq(ym_etag_match("\"xyzzyy\"", e), 0);
    ck_assert_int_eq(ym_etag_match("\"\"", e), 0);
    ck_assert_int_eq(ym_etag_match("", e), 0);
    ck_assert_int_eq(ym_etag_match(NULL, e), 0);
    /* Malformed: no match, so the full answer goes out. */
    ck_assert_int_eq(ym_etag_match("xyzzy", e), 0);
    ck_assert_int_eq(ym_etag_match("\"xyzzy", e), 0);
    ck_assert_int_eq(ym_etag_match("w/\"xyzzy\"", e), 0);
    ck_assert_int_eq(ym_etag_match("\"a\" junk, \"xyzzy\"", e), 0);
    ck_assert_int_eq(ym_etag_match("*, \"xyzzy\"", e), 0);
    ck_assert_int_eq(ym_etag_match("W/", e), 0);
    ck_assert_int_eq(ym_etag_match("\"xyzzy\"", "xyzzy"), 0); /* our tag must be quoted */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("playground");
    TCase *tc = tcase_create("playground");
    tcase_add_test(tc, test_playground_assets_are_the_files_with_their_hash);
    tcase_add_test(tc, test_etag_match_follows_rfc9110);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
