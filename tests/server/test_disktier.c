/* tests/server/test_disktier.c - the state cache's disk tier: the file format and its MAC, the
 * index rebuilt from a directory, LRU eviction within the byte budget, refusal of corrupted or
 * foreign files, and promotion into the RAM cache. */
#include <check.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/state.h"
#include "server/disktier.h"
#include "server/metrics.h"
#include "server/redistier.h"
#include "server/statecache.h"
#include "server/writeq.h"

static const ym_config small_cfg = {.n_layer = 2, .d_inner = 8, .d_conv = 4, .d_state = 4,
                                    .d_model = 4, .n_vocab = 16, .dt_rank = 1};

static ym_state_t *filled_state(float v, int64_t n_tokens)
{
    ym_state_t *st;
    ck_assert_int_eq(ym_state_new(&small_cfg, &st), YM_OK);
    size_t nc = (size_t)st->n_layer * st->d_inner * (st->d_conv - 1);
    size_t ns = (size_t)st->n_layer * st->d_inner * st->d_state;
    for (size_t i = 0; i < nc; i++)
        st->conv[i] = v + (float)i * 1e-3f;
    for (size_t i = 0; i < ns; i++)
        st->ssm[i] = -v - (float)i * 1e-3f;
    st->n_tokens = n_tokens;
    return st;
}

static int same_state(const ym_state_t *a, const ym_state_t *b)
{
    return a->n_tokens == b->n_tokens &&
           memcmp(a->conv, b->conv, ym_state_floats(a) * sizeof(float) -
                                        (size_t)a->n_layer * a->d_inner * a->d_state *
                                            sizeof(float)) == 0 &&
           memcmp(a->ssm, b->ssm, (size_t)a->n_layer * a->d_inner * a->d_state * sizeof(float)) ==
               0;
}

static const unsigned char fp[32] = {1, 2, 3};

static void key_of(ym_skey *k, int i)
{
    char id[16];
    snprintf(id, sizeof(id), "s%d", i);
    ym_skey_session(k, "t", id);
}

static char *temp_dir(void)
{
    char *d = strdup("/tmp/ym-disktier-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

static void rm_dir(const char *d)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
    ck_assert_int_eq(system(cmd), 0);
}

static void file_of(const char *dir, const ym_skey *k, char *out, size_t cap)
{
    char h[65];
    for (int i = 0; i < 32; i++)
        snprintf(h + 2 * i, 3, "%02x", k->b[i]);
    snprintf(out, cap, "%s/%s.yst", dir, h);
}

START_TEST(test_file_format_round_trip_and_mac)
{
    unsigned char key[32], other[32];
    memset(key, 5, sizeof(key));
    memset(other, 6, sizeof(other));
    ym_state_t *st = filled_state(0.25f, 17);
    ym_skey k, k2;
    key_of(&k, 1);
    key_of(&k2, 2);
    ym_sc_meta meta = {.appendable = 1, .pending = 42};
    memset(meta.hist.b, 9, 32);
    ym_skey_root(&meta.root, "t", "");
    ym_shist_init(&meta.run, &meta.root);
    unsigned char *buf;
    size_t len;
    ck_assert_int_eq(ym_state_file_format(&k, YM_SC_SESSION, &meta, st, fp, key, &buf, &len),
                     YM_OK);
    /* The MAC is keyed BLAKE2b-256 over everything before it (the documented layout). */
    unsigned char want[32];
    crypto_generichash(want, 32, buf, len - 32, key, 32);
    ck_assert_int_eq(memcmp(want, buf + len - 32, 32), 0);
    ck_assert_int_eq(memcmp(buf, "YMSF", 4), 0);
    ym_sc_kind kind;
    ym_sc_meta got;
    ym_state_t *back = NULL;
    ym_diag d = {0};
    ck_assert_int_eq(ym_state_file_parse(buf, len, &k, st, fp, key, &kind, &got, &back, &d),
                     YM_OK);
    ck_assert_int_eq(kind, YM_SC_SESSION);
    ck_assert(ym_skey_equal(&got.hist, &meta.hist));
    ck_assert(ym_skey_equal(&got.root, &meta.root));
    ck_assert_int_eq(memcmp(got.run.s, meta.run.s, sizeof(meta.run.s)), 0);
    ck_assert_int_eq(got.pending, 42);
    ck_assert_int_eq(got.appendable, 1);
    ck_assert(same_state(st, back));
    ym_state_free(back);
    /* Another key, another name, any flipped bit, any truncation: refused. */
    ck_assert_int_eq(ym_state_file_parse(buf, len, &k, st, fp, other, &kind, &got, &back, &d),
                     YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(d.msg, "MAC"));
    ck_assert_int_eq(ym_state_file_parse(buf, len, &k2, st, fp, key, &kind, &got, &back, &d),
                     YM_EFORMAT);
    for (size_t i = 0; i < len; i += (i < 600 ? 1 : 37)) {
        buf[i] ^= 0x04;
        ck_assert_msg(ym_state_file_parse(buf, len, &k, st, fp, key, &kind, &got, &back, &d) ==
                          YM_EFORMAT,
                      "byte %zu flipped, accepted", i);
        ck_assert_ptr_null(back);
        buf[i] ^= 0x04;
    }
    for (size_t n = 0; n < len; n += 101)
        ck_assert_int_eq(ym_state_file_parse(buf, n, &k, st, fp, key, &kind, &got, &back, &d),
                         YM_EFORMAT);
    /* A file MAC'd with the right key but for another model is refused by the blob check. */
    unsigned char fp2[32] = {9};
    free(buf);
    ck_assert_int_eq(ym_state_file_format(&k, YM_SC_PREFIX, NULL, st, fp2, key, &buf, &len),
                     YM_OK);
    ck_assert_int_eq(ym_state_file_parse(buf, len, &k, st, fp, key, &kind, &got, &back, &d),
                     YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(d.msg, "another model"));
    free(buf);
    ym_state_free(st);
}
END_TEST

static ym_disktier_t *open_tier(const char *dir, uint64_t budget, const char *secret,
                                ym_metrics_t *m)
{
    ym_state_t *like = filled_state(0, 1);
    ym_disktier_opts o = {.dir = dir, .budget = budget, .fsync = 0, .secret = secret};
    ym_disktier_t *t = NULL;
    ym_diag d = {0};
    ck_assert_int_eq(ym_disktier_open(&o, like, fp, m, &t, &d), YM_OK);
    ym_state_free(like);
    return t;
}

START_TEST(test_tier_lru_eviction_rescan_and_refusal)
{
    char *dir = temp_dir();
    ym_metrics_t *m = ym_metrics_new();
    ym_state_t *st[4];
    for (int i = 0; i < 4; i++)
        st[i] = filled_state((float)i, i + 1);
    unsigned char *buf;
    size_t one;
    ym_skey k[4];
    for (int i = 0; i < 4; i++)
        key_of(&k[i], i);
    ck_assert_int_eq(ym_state_file_format(&k[0], YM_SC_PREFIX, NULL, st[0], fp, fp, &buf, &one),
                     YM_OK);
    free(buf);
    /* Room for three files of this size. */
    ym_disktier_t *t = open_tier(dir, 3 * one + one / 2, NULL, m);
    for (int i = 0; i < 3; i++)
        ym_disktier_write(t, &k[i], YM_SC_PREFIX, NULL, st[i], NULL, NULL);
    ym_disktier_flush(t);
    ym_disktier_stats s;
    ym_disktier_get_stats(t, &s);
    ck_assert_int_eq(s.n_files, 3);
    ck_assert_uint_eq(s.bytes, 3 * one);
    /* Reading 0 makes it recent: writing 3 evicts 1, the least recently used. */
    ym_sc_kind kind;
    ym_sc_meta meta;
    ym_state_t *back = NULL;
    ck_assert_int_eq(ym_disktier_load(t, &k[0], &kind, &meta, &back), YM_OK);
    ck_assert(same_state(st[0], back));
    ck_assert_int_eq(kind, YM_SC_PREFIX);
    ym_state_free(back);
    ym_disktier_write(t, &k[3], YM_SC_PREFIX, NULL, st[3], NULL, NULL);
    ym_disktier_flush(t);
    ck_assert_int_eq(ym_disktier_has(t, &k[1]), 0);
    ck_assert_int_eq(ym_disktier_has(t, &k[0]) + ym_disktier_has(t, &k[2]) +
                         ym_disktier_has(t, &k[3]), 3);
    char path[512];
    file_of(dir, &k[1], path, sizeof(path));
    ck_assert_int_ne(access(path, F_OK), 0); /* the file went too */
    ck_assert_int_eq(ym_disktier_load(t, &k[1], &kind, &meta, &back), YM_ENOENT);
    ym_disktier_remove(t, &k[2]);
    ym_disktier_flush(t);
    ck_assert_int_eq(ym_disktier_has(t, &k[2]), 0);
    ym_disktier_close(t);

    /* Reopen: the index comes back from the files, a stray temp file is removed, the random
     * key in state.key is reused (so the files still verify), and it is private. */
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s/.abc.1.tmp", dir);
    FILE *f = fopen(tmp, "w");
    fputs("partial", f);
    fclose(f);
    struct stat sb;
    snprintf(path, sizeof(path), "%s/state.key", dir);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600);
    t = open_tier(dir, 3 * one + one / 2, NULL, m);
    ck_assert_int_ne(access(tmp, F_OK), 0);
    ym_disktier_get_stats(t, &s);
    ck_assert_int_eq(s.n_files, 2);
    ck_assert_int_eq(ym_disktier_load(t, &k[3], &kind, &meta, &back), YM_OK);
    ck_assert(same_state(st[3], back));
    ym_state_free(back);

    /* A corrupted file is refused, counted and deleted. */
    file_of(dir, &k[0], path, sizeof(path));
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "\xff", 1, 200), 1);
    close(fd);
    ck_assert_int_eq(ym_disktier_load(t, &k[0], &kind, &meta, &back), YM_EFORMAT);
    ck_assert_ptr_null(back);
    ck_assert_int_ne(access(path, F_OK), 0);
    ck_assert_int_eq(ym_disktier_has(t, &k[0]), 0);
    ym_disktier_get_stats(t, &s);
    ck_assert_uint_eq(s.refused, 1);
    ym_disktier_close(t);

    /* Opened with a secret, the files written under the random key are foreign: refused. */
    t = open_tier(dir, 0, "a shared secret", m);
    ck_assert_int_eq(ym_disktier_load(t, &k[3], &kind, &meta, &back), YM_EFORMAT);
    ym_disktier_get_stats(t, &s);
    ck_assert_int_eq(s.n_files, 0);
    ym_disktier_close(t);

    char *text;
    size_t len;
    ck_assert_int_eq(ym_metrics_render(m, &text, &len), 0);
    ck_assert_ptr_nonnull(strstr(text, "\nyunmin_state_disk_refused_total 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nyunmin_state_disk_evictions_total 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nyunmin_state_disk_writes_total 4\n"));
    free(text);
    for (int i = 0; i < 4; i++)
        ym_state_free(st[i]);
    ym_metrics_free(m);
    rm_dir(dir);
    free(dir);
}
END_TEST

static void count_done(void *arg)
{
    (*(int *)arg)++;
}

/* The write's callback: the file must already be in place when it runs (a response ends on
 * it, and a SIGKILL may follow at once). */
typedef struct {
    char path[512];
    int calls, existed;
} file_seen;

static void check_file(void *arg)
{
    file_seen *f = arg;
    f->calls++;
    f->existed += access(f->path, F_OK) == 0;
}

START_TEST(test_done_after_file_in_place)
{
    char *dir = temp_dir();
    ym_disktier_t *t = open_tier(dir, 0, NULL, NULL);
    ym_state_t *st = filled_state(1, 3);
    ym_skey k;
    key_of(&k, 7);
    file_seen f = {.calls = 0};
    file_of(dir, &k, f.path, sizeof(f.path));
    ym_disktier_write(t, &k, YM_SC_SESSION, NULL, st, check_file, &f);
    ym_disktier_flush(t);
    ck_assert_int_eq(f.calls, 1);
    ck_assert_int_eq(f.existed, 1);
    ym_disktier_close(t);
    ym_state_free(st);
    rm_dir(dir);
    free(dir);
}
END_TEST

START_TEST(test_scache_promotes_from_disk)
{
    char *dir = temp_dir();
    ym_state_t *probe = filled_state(0, 1);
    size_t one = ym_scache_entry_bytes(probe);
    ym_state_free(probe);
    ym_scache_t *c;
    ck_assert_int_eq(ym_scache_new(one, NULL, &c), YM_OK); /* RAM holds one state */
    ym_scache_set_disk(c, open_tier(dir, 0, "s", NULL));
    ym_skey k[3];
    int done = 0;
    for (int i = 0; i < 3; i++) {
        key_of(&k[i], i);
        ym_sc_meta meta = {.pending = i};
        memset(meta.hist.b, i + 1, 32);
        ck_assert_int_eq(ym_scache_put_durable(c, &k[i], YM_SC_SESSION, &meta,
                                               filled_state((float)i, 10 + i), count_done, &done),
                         1);
        ym_scache_flush(c); /* an entry is pinned until its file is written */
    }
    ym_scache_flush(c);
    ck_assert_int_eq(done, 3); /* each once, after its file was written */
    /* 0 left RAM; pinning it reads it back from disk, with its meta. */
    ym_sc_entry *e = ym_scache_pin(c, &k[0]);
    ck_assert_ptr_nonnull(e);
    ym_state_t *want = filled_state(0, 10);
    ck_assert(same_state(want, ym_sc_entry_state(e)));
    ym_state_free(want);
    ck_assert_int_eq(ym_sc_entry_meta(e)->pending, 0);
    ck_assert_int_eq(ym_sc_entry_meta(e)->hist.b[0], 1);
    ym_scache_unpin(c, e);
    ck_assert_int_eq(ym_scache_touch(c, &k[1]), 1); /* on disk counts as cached */
    /* Removing deletes the file too. */
    ck_assert_int_eq(ym_scache_remove(c, &k[1]), 1);
    ym_scache_flush(c);
    ck_assert_ptr_null(ym_scache_pin(c, &k[1]));
    ym_scache_free(c);

    /* A RAM budget smaller than one state: nothing stays in RAM, the disk still serves (the
     * state is lent unlinked and freed at its unpin). */
    ck_assert_int_eq(ym_scache_new(1, NULL, &c), YM_OK);
    ym_scache_set_disk(c, open_tier(dir, 0, "s", NULL));
    e = ym_scache_pin(c, &k[2]); /* written above, under the same secret */
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(ym_sc_entry_state(e)->n_tokens, 12);
    ym_scache_unpin(c, e);
    ck_assert_int_eq(ym_scache_put(c, &k[1], YM_SC_PREFIX, NULL, filled_state(1, 5)), 0);
    ym_scache_flush(c);
    e = ym_scache_pin(c, &k[1]);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(ym_sc_entry_state(e)->n_tokens, 5);
    ck_assert_int_eq(ym_sc_entry_kind(e), YM_SC_PREFIX);
    ym_scache_stats rs;
    ym_scache_get_stats(c, &rs);
    ck_assert_uint_eq(rs.bytes, 0);
    ym_scache_unpin(c, e);
    ym_scache_free(c);
    rm_dir(dir);
    free(dir);
}
END_TEST

/* One blob shared by two tier writes of a state: formatted once, the same bytes a tier would
 * format on its own; a tier with another key gets its own bytes, under its key. */
START_TEST(test_shared_blob_formats_once)
{
    unsigned char key[32], other[32];
    memset(key, 5, sizeof(key));
    memset(other, 6, sizeof(other));
    ym_state_t *st = filled_state(0.5f, 9);
    ym_writeq_job j = {.kind = YM_SC_SESSION, .st = st};
    key_of(&j.key, 3);
    j.meta.pending = 11;
    j.meta.appendable = 1;
    memset(j.meta.hist.b, 7, 32);
    unsigned char *want = NULL;
    size_t want_len = 0;
    ck_assert_int_eq(ym_state_file_format(&j.key, j.kind, &j.meta, st, fp, key, &want,
                                          &want_len), YM_OK);
    j.blob = ym_wblob_new(3);
    ck_assert_ptr_nonnull(j.blob);
    const unsigned char *a = NULL, *b = NULL, *c = NULL;
    unsigned char *own_a = NULL, *own_b = NULL, *own_c = NULL;
    size_t la = 0, lb = 0, lc = 0;
    ck_assert_int_eq(ym_writeq_job_bytes(&j, fp, key, &a, &la, &own_a), YM_OK);
    ck_assert_int_eq(ym_writeq_job_bytes(&j, fp, key, &b, &lb, &own_b), YM_OK);
    ck_assert_ptr_null(own_a);
    ck_assert_ptr_null(own_b);
    ck_assert_ptr_eq(a, b); /* formatted once */
    ck_assert_uint_eq(la, want_len);
    ck_assert_int_eq(memcmp(a, want, want_len), 0);
    ck_assert_int_eq(ym_writeq_job_bytes(&j, fp, other, &c, &lc, &own_c), YM_OK);
    ck_assert_ptr_nonnull(own_c);
    ck_assert_ptr_eq(c, own_c);
    ck_assert_uint_eq(lc, want_len);
    ck_assert_int_ne(memcmp(c, want, want_len), 0);
    ym_sc_kind kind;
    ym_sc_meta meta;
    ym_state_t *back = NULL;
    ck_assert_int_eq(ym_state_file_parse(c, lc, &j.key, st, fp, other, &kind, &meta, &back,
                                         NULL), YM_OK);
    ck_assert(same_state(st, back));
    ck_assert_int_eq(meta.pending, 11);
    ym_state_free(back);
    ck_assert_int_eq(ym_state_file_parse(a, la, &j.key, st, fp, other, &kind, &meta, &back,
                                         NULL), YM_EFORMAT);
    free(own_c);
    for (int i = 0; i < 3; i++)
        ym_wblob_unref(j.blob);
    /* No blob: formatted here, owned by the caller. */
    j.blob = NULL;
    ck_assert_int_eq(ym_writeq_job_bytes(&j, fp, key, &a, &la, &own_a), YM_OK);
    ck_assert_ptr_nonnull(own_a);
    ck_assert_int_eq(memcmp(a, want, want_len), 0);
    free(own_a);
    free(want);
    ym_state_free(st);
}
END_TEST

START_TEST(test_redis_url)
{
    char host[64];
    int port, db;
    ym_diag d = {0};
    ck_assert_int_eq(ym_redis_url_parse("redis://10.0.0.5:6380/3", host, sizeof(host), &port,
                                        &db, &d), 0);
    ck_assert_str_eq(host, "10.0.0.5");
    ck_assert_int_eq(port, 6380);
    ck_assert_int_eq(db, 3);
    ck_assert_int_eq(ym_redis_url_parse("redis://cache", host, sizeof(host), &port, &db, &d), 0);
    ck_assert_str_eq(host, "cache");
    ck_assert_int_eq(port, 6379);
    ck_assert_int_eq(db, 0);
    ck_assert_int_eq(ym_redis_url_parse("redis://cache/", host, sizeof(host), &port, &db, &d), 0);
    static const char *bad[] = {"", "http://x:1/0", "redis://", "redis://:6379/0",
                                "redis://h:0/0", "redis://h:70000/0", "redis://h:12x/0",
                                "redis://h:1/x", "redis://h:1/2/3", "redis://h:1/-1",
                                "redis://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        d.msg[0] = '\0';
        ck_assert_msg(ym_redis_url_parse(bad[i], host, sizeof(host), &port, &db, &d) == -1,
                      "accepted %s", bad[i]);
        ck_assert_ptr_nonnull(strstr(d.msg, "session_store"));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("disktier");
    TCase *tc = tcase_create("disktier");
    tcase_add_test(tc, test_file_format_round_trip_and_mac);
    tcase_add_test(tc, test_tier_lru_eviction_rescan_and_refusal);
    tcase_add_test(tc, test_done_after_file_in_place);
    tcase_add_test(tc, test_scache_promotes_from_disk);
    tcase_add_test(tc, test_shared_blob_formats_once);
    tcase_add_test(tc, test_redis_url);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
