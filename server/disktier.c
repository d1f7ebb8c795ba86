/* server/disktier.c - state files in a directory, an index of them, and their writer thread.
 *
 * Owns: the index (a chained hash table of {key, bytes} on an LRU list, most recent at the
 * head), the queue of writes and removals, the writer thread and the MAC key. Runs: the caller's
 * thread for lookups and reads, the writer thread for every change on disk. Eviction happens in
 * the writer after each write, from the tail of the list. Must not: hold the index lock while
 * reading or writing a file. */
#include "server/disktier.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/log.h"
#include "server/sched.h"
#include "server/writeq.h"

#define FILE_MAGIC "YMSF"
#define FILE_VERSION 1u
#define RUN_BYTES sizeof(ym_shist)
#define META_BYTES (32 + 32 + 32 + RUN_BYTES) /* key, hist, root, run */
#define MAC_BYTES 32
#define LOG_INTERVAL_S 60.0

typedef struct dent {
    ym_skey key;
    uint64_t bytes;
    struct dent *hnext, *prev, *next;
} dent;

struct ym_disktier {
    char *dir; /* owned */
    int fsync;
    unsigned char mac_key[32];
    unsigned char fp[32];
    ym_state_t *like;      /* owned */
    ym_metrics_t *metrics; /* borrowed, may be NULL */

    pthread_mutex_t lock; /* the index and the counters */
    dent **buckets;
    size_t n_buckets, n_files;
    dent *head, *tail;
    uint64_t bytes, budget;
    uint64_t writes, hits, misses, refused, errors, evictions;
    double last_log_refused, last_log_error;
    uint64_t quiet_refused, quiet_errors;

    ym_writeq q;           /* writes and removals, in order, on its thread */
    uint64_t tmp_serial;   /* the writer thread's */
};

/* --- the file format --- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void mac(const unsigned char key[32], const unsigned char *buf, size_t len,
                unsigned char out[MAC_BYTES])
{
    crypto_generichash(out, MAC_BYTES, buf, len, key, 32);
}

ym_err ym_state_file_format(const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                            const ym_state_t *st, const unsigned char fp[32],
                            const unsigned char mac_key[32], unsigned char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    size_t blob = ym_session_blob_size(st);
    size_t n = YM_STATE_FILE_HEADER + META_BYTES + blob + MAC_BYTES;
    /* Not calloc: every byte is written below (the unset meta fields zeroed here), and a
     * state file is some hundreds of KB, written once per request. */
    unsigned char *p = malloc(n);
    if (p == NULL)
        return YM_ENOMEM;
    memset(p, 0, YM_STATE_FILE_HEADER + META_BYTES);
    memcpy(p, FILE_MAGIC, 4);
    put_u32(p + 4, FILE_VERSION);
    put_u32(p + 8, (uint32_t)kind);
    put_u32(p + 12, meta ? (uint32_t)meta->pending : (uint32_t)-1);
    put_u32(p + 16, meta ? (uint32_t)meta->appendable : 0);
    put_u32(p + 20, (uint32_t)RUN_BYTES);
    unsigned char *m = p + YM_STATE_FILE_HEADER;
    memcpy(m, key->b, 32);
    if (meta != NULL) {
        memcpy(m + 32, meta->hist.b, 32);
        memcpy(m + 64, meta->root.b, 32);
        memcpy(m + 96, meta->run.s, RUN_BYTES);
    }
    ym_skey hist = {{0}};
    if (meta != NULL)
        hist = meta->hist;
    ym_err err = ym_session_blob_write(st, &hist, fp, m + META_BYTES, blob);
    if (err != YM_OK) {
        free(p);
        return err;
    }
    mac(mac_key, p, n - MAC_BYTES, p + n - MAC_BYTES);
    *buf = p;
    *len = n;
    return YM_OK;
}

ym_err ym_state_file_parse(const unsigned char *buf, size_t len, const ym_skey *key,
                           const ym_state_t *like, const unsigned char fp[32],
                           const unsigned char mac_key[32], ym_sc_kind *kind, ym_sc_meta *meta,
                           ym_state_t **st, ym_diag *diag)
{
    *st = NULL;
    if (len < YM_STATE_FILE_HEADER + META_BYTES + MAC_BYTES)
        return ym_diag_set(diag, YM_EFORMAT, "state file: %zu bytes, shorter than its header",
                           len);
    unsigned char want[MAC_BYTES];
    mac(mac_key, buf, len - MAC_BYTES, want);
    if (sodium_memcmp(want, buf + len - MAC_BYTES, MAC_BYTES) != 0)
        return ym_diag_set(diag, YM_EFORMAT,
                           "state file: MAC mismatch (corrupted, or written with another key)");
    if (memcmp(buf, FILE_MAGIC, 4) != 0 || get_u32(buf + 4) != FILE_VERSION)
        return ym_diag_set(diag, YM_EFORMAT, "state file: bad magic or version");
    uint32_t k = get_u32(buf + 8);
    if (k != YM_SC_SESSION && k != YM_SC_PREFIX)
        return ym_diag_set(diag, YM_EFORMAT, "state file: unknown kind %u", k);
    if (get_u32(buf + 20) != RUN_BYTES)
        return ym_diag_set(diag, YM_EFORMAT, "state file: written by another build");
    const unsigned char *m = buf + YM_STATE_FILE_HEADER;
    if (sodium_memcmp(m, key->b, 32) != 0)
        return ym_diag_set(diag, YM_EFORMAT, "state file: holds another key than its name");
    if (get_u32(buf + 16) > 1)
        return ym_diag_set(diag, YM_EFORMAT, "state file: bad appendable flag");
    memset(meta, 0, sizeof(*meta));
    meta->pending = (int32_t)get_u32(buf + 12);
    meta->appendable = (int)get_u32(buf + 16);
    memcpy(meta->hist.b, m + 32, 32);
    memcpy(meta->root.b, m + 64, 32);
    memcpy(meta->run.s, m + 96, RUN_BYTES);
    ym_skey hist;
    ym_err err = ym_session_blob_read(m + META_BYTES, len - YM_STATE_FILE_HEADER - META_BYTES -
                                      MAC_BYTES, like, fp, st, &hist, diag);
    if (err != YM_OK)
        return err;
    if (!ym_skey_equal(&hist, &meta->hist)) {
        ym_state_free(*st);
        *st = NULL;
        return ym_diag_set(diag, YM_EFORMAT, "state file: two different history hashes");
    }
    *kind = (ym_sc_kind)k;
    return YM_OK;
}

/* --- the index (lock held) --- */

static size_t bucket_of(const ym_disktier_t *d, const ym_skey *k)
{
    uint64_t h;
    memcpy(&h, k->b, sizeof(h));
    return (size_t)h & (d->n_buckets - 1);
}

static dent *find(const ym_disktier_t *d, const ym_skey *k)
{
    for (dent *e = d->buckets[bucket_of(d, k)]; e != NULL; e = e->hnext)
        if (ym_skey_equal(&e->key, k))
            return e;
    return NULL;
}

static void lru_unlink(ym_disktier_t *d, dent *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        d->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        d->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(ym_disktier_t *d, dent *e)
{
    e->prev = NULL;
    e->next = d->head;
    if (d->head)
        d->head->prev = e;
    else
        d->tail = e;
    d->head = e;
}

static void grow(ym_disktier_t *d)
{
    size_t n = d->n_buckets * 2;
    dent **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < d->n_buckets; i++) {
        dent *e = d->buckets[i];
        while (e != NULL) {
            dent *next = e->hnext;
            uint64_t h;
            memcpy(&h, e->key.b, sizeof(h));
            e->hnext = b[(size_t)h & (n - 1)];
            b[(size_t)h & (n - 1)] = e;
            e = next;
        }
    }
    free(d->buckets);
    d->buckets = b;
    d->n_buckets = n;
}

static void publish(ym_disktier_t *d)
{
    if (d->metrics == NULL)
        return;
    ym_metrics_set(d->metrics, YM_G_DISK_BYTES, (int64_t)d->bytes);
    ym_metrics_set(d->metrics, YM_G_DISK_BUDGET, (int64_t)d->budget);
    ym_metrics_set(d->metrics, YM_G_DISK_FILES, (int64_t)d->n_files);
}

/* Index key with bytes as most recent (new or updated). */
static int index_put(ym_disktier_t *d, const ym_skey *key, uint64_t bytes)
{
    dent *e = find(d, key);
    if (e == NULL) {
        if ((e = calloc(1, sizeof(*e))) == NULL)
            return -1;
        e->key = *key;
        if (d->n_files >= d->n_buckets)
            grow(d);
        size_t b = bucket_of(d, key);
        e->hnext = d->buckets[b];
        d->buckets[b] = e;
        d->n_files++;
    } else {
        lru_unlink(d, e);
        d->bytes -= e->bytes;
    }
    e->bytes = bytes;
    d->bytes += bytes;
    lru_push_front(d, e);
    return 0;
}

static void index_drop(ym_disktier_t *d, dent *e)
{
    dent **pp = &d->buckets[bucket_of(d, &e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(d, e);
    d->bytes -= e->bytes;
    d->n_files--;
    free(e);
}

/* --- files --- */

static void hex(const ym_skey *k, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[k->b[i] >> 4];
        out[2 * i + 1] = digits[k->b[i] & 15];
    }
    out[64] = '\0';
}

static int unhex(const char *s, ym_skey *k)
{
    for (int i = 0; i < 64; i++) {
        char c = s[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i % 2 == 0)
            k->b[i / 2] = (unsigned char)(v << 4);
        else
            k->b[i / 2] |= (unsigned char)v;
    }
    return 0;
}

static void file_path(const ym_disktier_t *d, const ym_skey *k, char *out, size_t cap)
{
    char h[65];
    hex(k, h);
    snprintf(out, cap, "%s/%s.yst", d->dir, h);
}

/* Log a problem of one kind at most once per interval, with how many were not logged. */
static void log_limited(ym_disktier_t *d, int refused, const char *fmt, const char *detail)
{
    double now = ym_now();
    pthread_mutex_lock(&d->lock);
    double *last = refused ? &d->last_log_refused : &d->last_log_error;
    uint64_t *quiet = refused ? &d->quiet_refused : &d->quiet_errors;
    int say = *last == 0 || now - *last >= LOG_INTERVAL_S;
    uint64_t n = *quiet;
    if (say) {
        *last = now;
        *quiet = 0;
    } else {
        (*quiet)++;
    }
    pthread_mutex_unlock(&d->lock);
    if (say)
        ym_log(YM_LOG_WARN, NULL, "state dir: %s: %s (%llu more since the last such line)", fmt,
               detail, (unsigned long long)n);
}

static void count_error(ym_disktier_t *d, const char *what, const char *detail)
{
    pthread_mutex_lock(&d->lock);
    d->errors++;
    pthread_mutex_unlock(&d->lock);
    if (d->metrics)
        ym_metrics_add(d->metrics, YM_M_DISK_ERRORS, 1);
    log_limited(d, 0, what, detail);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void evict(ym_disktier_t *d)
{
    char path[4096];
    for (;;) {
        pthread_mutex_lock(&d->lock);
        if (d->budget == 0 || d->bytes <= d->budget || d->tail == NULL) {
            publish(d);
            pthread_mutex_unlock(&d->lock);
            return;
        }
        dent *e = d->tail;
        file_path(d, &e->key, path, sizeof(path));
        index_drop(d, e);
        d->evictions++;
        pthread_mutex_unlock(&d->lock);
        if (d->metrics)
            ym_metrics_add(d->metrics, YM_M_DISK_EVICTIONS, 1);
        unlink(path);
    }
}

static void do_write(ym_disktier_t *d, const ym_writeq_job *j)
{
    double t0 = ym_now();
    const unsigned char *buf = NULL;
    unsigned char *own = NULL;
    size_t len = 0;
    ym_err err = ym_writeq_job_bytes(j, d->fp, d->mac_key, &buf, &len, &own);
    if (err != YM_OK) {
        free(own);
        count_error(d, "cannot format a state", ym_strerror(err));
        return;
    }
    if (d->budget != 0 && len > d->budget) {
        free(own);
        return; /* never fits */
    }
    char path[4096], tmp[4200], h[65];
    hex(&j->key, h);
    snprintf(path, sizeof(path), "%s/%s.yst", d->dir, h);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%llu.tmp", d->dir, h,
             (unsigned long long)++d->tmp_serial);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int ok = fd >= 0 && write_all(fd, buf, len) == 0 && (!d->fsync || fsync(fd) == 0);
    int e = errno;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    free(own);
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        count_error(d, "cannot write a state file", strerror(e));
        return;
    }
    if (d->fsync) {
        int dfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    pthread_mutex_lock(&d->lock);
    index_put(d, &j->key, len);
    d->writes++;
    pthread_mutex_unlock(&d->lock);
    if (d->metrics) {
        ym_metrics_add(d->metrics, YM_M_DISK_WRITES, 1);
        ym_metrics_observe(d->metrics, YM_H_DISK_WRITE, ym_now() - t0);
    }
    evict(d);
}

static void do_remove(ym_disktier_t *d, const ym_skey *key)
{
    char path[4096];
    file_path(d, key, path, sizeof(path));
    pthread_mutex_lock(&d->lock);
    dent *e = find(d, key);
    if (e != NULL)
        index_drop(d, e);
    publish(d);
    pthread_mutex_unlock(&d->lock);
    unlink(path);
}

/* The writer thread's job: the file written (temp + rename) or removed. */
static void run_job(void *owner, const ym_writeq_job *j)
{
    ym_disktier_t *d = owner;
    if (j->remove)
        do_remove(d, &j->key);
    else
        do_write(d, j);
}

void ym_disktier_write(ym_disktier_t *d, const ym_skey *key, ym_sc_kind kind,
                       const ym_sc_meta *meta, const ym_state_t *st, void (*done)(void *),
                       void *arg)
{
    ym_disktier_write_blob(d, key, kind, meta, st, NULL, done, arg);
}

void ym_disktier_write_blob(ym_disktier_t *d, const ym_skey *key, ym_sc_kind kind,
                            const ym_sc_meta *meta, const ym_state_t *st, ym_wblob *blob,
                            void (*done)(void *), void *arg)
{
    if (ym_writeq_write(&d->q, key, kind, meta, st, blob, done, arg) != YM_OK) {
        count_error(d, "cannot queue a state write", "out of memory");
        if (done)
            done(arg);
    }
}

void ym_disktier_remove(ym_disktier_t *d, const ym_skey *key)
{
    if (ym_writeq_remove(&d->q, key) != YM_OK)
        do_remove(d, key); /* in this thread, rather than leave a deleted session on disk */
}

void ym_disktier_flush(ym_disktier_t *d)
{
    ym_writeq_flush(&d->q);
}

int ym_disktier_has(ym_disktier_t *d, const ym_skey *key)
{
    pthread_mutex_lock(&d->lock);
    int r = find(d, key) != NULL;
    pthread_mutex_unlock(&d->lock);
    return r;
}

static void count(ym_disktier_t *d, uint64_t *field, ym_counter c)
{
    pthread_mutex_lock(&d->lock);
    (*field)++;
    pthread_mutex_unlock(&d->lock);
    if (d->metrics)
        ym_metrics_add(d->metrics, c, 1);
}

ym_err ym_disktier_load(ym_disktier_t *d, const ym_skey *key, ym_sc_kind *kind,
                        ym_sc_meta *meta, ym_state_t **st)
{
    *st = NULL;
    if (!ym_disktier_has(d, key)) {
        count(d, &d->misses, YM_M_DISK_MISSES);
        return YM_ENOENT;
    }
    char path[4096];
    file_path(d, key, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size <= 0 || sb.st_size > (off_t)1 << 40) {
        if (fd >= 0)
            close(fd);
        count(d, &d->misses, YM_M_DISK_MISSES); /* evicted meanwhile */
        return YM_ENOENT;
    }
    size_t len = (size_t)sb.st_size;
    unsigned char *buf = malloc(len);
    size_t got = 0;
    while (buf != NULL && got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (buf == NULL || got != len) {
        free(buf);
        count_error(d, "cannot read a state file", buf == NULL ? "out of memory" : "short read");
        return buf == NULL ? YM_ENOMEM : YM_EIO;
    }
    ym_diag diag = {0};
    ym_err err = ym_state_file_parse(buf, len, key, d->like, d->fp, d->mac_key, kind, meta, st,
                                     &diag);
    free(buf);
    if (err == YM_EFORMAT) {
        count(d, &d->refused, YM_M_DISK_REFUSED);
        char h[65];
        hex(key, h);
        char detail[600];
        snprintf(detail, sizeof(detail), "%s.yst: %s", h, diag.msg);
        log_limited(d, 1, "refused and deleted a state file", detail);
        pthread_mutex_lock(&d->lock);
        dent *e = find(d, key);
        if (e != NULL)
            index_drop(d, e);
        publish(d);
        pthread_mutex_unlock(&d->lock);
        unlink(path);
        return err;
    }
    if (err != YM_OK) {
        count_error(d, "cannot read a state file", ym_strerror(err));
        return err;
    }
    pthread_mutex_lock(&d->lock);
    dent *e = find(d, key);
    if (e != NULL) {
        lru_unlink(d, e);
        lru_push_front(d, e);
    }
    d->hits++;
    pthread_mutex_unlock(&d->lock);
    if (d->metrics)
        ym_metrics_add(d->metrics, YM_M_DISK_HITS, 1);
    return YM_OK;
}

/* --- opening --- */

void ym_state_mac_key_from_secret(const char *secret, unsigned char out[32])
{
    static const char tag[] = "yunmin state secret";
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    crypto_generichash_update(&h, (const unsigned char *)tag, sizeof(tag));
    crypto_generichash_update(&h, (const unsigned char *)secret, strlen(secret));
    crypto_generichash_final(&h, out, 32);
}

static ym_err load_key(ym_disktier_t *d, const char *secret, ym_diag *diag)
{
    if (secret != NULL && secret[0] != '\0') {
        ym_state_mac_key_from_secret(secret, d->mac_key);
        return YM_OK;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/state.key", d->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, d->mac_key, 32);
        close(fd);
        if (n != 32)
            return ym_diag_set(diag, YM_EFORMAT, "state_dir: state.key is not 32 bytes");
        return YM_OK;
    }
    randombytes_buf(d->mac_key, 32);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, d->mac_key, 32) != 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return ym_diag_set(diag, YM_EIO, "state_dir: cannot create state.key: %s", strerror(e));
    }
    close(fd);
    return YM_OK;
}

typedef struct found {
    ym_skey key;
    uint64_t bytes;
    struct timespec mtime;
} found;

static int by_mtime(const void *a, const void *b)
{
    const found *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec)
        return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return memcmp(x->key.b, y->key.b, 32);
}

static ym_err scan(ym_disktier_t *d, ym_diag *diag)
{
    DIR *dir = opendir(d->dir);
    if (dir == NULL)
        return ym_diag_set(diag, YM_EIO, "state_dir: cannot open the directory: %s",
                           strerror(errno));
    found *f = NULL;
    size_t n = 0, cap = 0;
    int n_tmp = 0;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(dir)) != NULL) {
        size_t l = strlen(de->d_name);
        snprintf(path, sizeof(path), "%s/%s", d->dir, de->d_name);
        if (l > 4 && strcmp(de->d_name + l - 4, ".tmp") == 0) {
            if (unlink(path) == 0)
                n_tmp++;
            continue;
        }
        ym_skey k;
        struct stat sb;
        if (l != 68 || strcmp(de->d_name + 64, ".yst") != 0 || unhex(de->d_name, &k) != 0 ||
            stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            found *g = realloc(f, nc * sizeof(*f));
            if (g == NULL) {
                closedir(dir);
                free(f);
                return YM_ENOMEM;
            }
            f = g;
            cap = nc;
        }
        f[n].key = k;
        f[n].bytes = (uint64_t)sb.st_size;
        f[n].mtime = sb.st_mtim;
        n++;
    }
    closedir(dir);
    if (n > 0)
        qsort(f, n, sizeof(*f), by_mtime);
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < n; i++)
        index_put(d, &f[i].key, f[i].bytes); /* oldest first: the newest ends at the head */
    pthread_mutex_unlock(&d->lock);
    free(f);
    ym_log(YM_LOG_INFO, NULL,
           "state dir %s: %zu state files, %llu bytes (budget %llu); %d stray temp files removed",
           d->dir, n, (unsigned long long)d->bytes, (unsigned long long)d->budget, n_tmp);
    evict(d);
    return YM_OK;
}

ym_err ym_disktier_open(const ym_disktier_opts *o, const ym_state_t *like,
                        const unsigned char fp[32], ym_metrics_t *metrics, ym_disktier_t **out,
                        ym_diag *diag)
{
    *out = NULL;
    if (sodium_init() < 0)
        return YM_ENOMEM;
    ym_disktier_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return YM_ENOMEM;
    pthread_mutex_init(&d->lock, NULL);
    d->fsync = o->fsync;
    d->budget = o->budget;
    d->metrics = metrics;
    memcpy(d->fp, fp, 32);
    ym_err err = YM_ENOMEM;
    d->n_buckets = 64;
    if ((d->dir = strdup(o->dir)) == NULL ||
        (d->buckets = calloc(d->n_buckets, sizeof(*d->buckets))) == NULL)
        goto fail;
    if ((err = ym_state_new_like(like, &d->like)) != YM_OK)
        goto fail;
    if (mkdir(d->dir, 0700) != 0 && errno != EEXIST) {
        err = ym_diag_set(diag, YM_EIO, "state_dir: cannot create the directory: %s",
                          strerror(errno));
        goto fail;
    }
    if ((err = load_key(d, o->secret, diag)) != YM_OK || (err = scan(d, diag)) != YM_OK)
        goto fail;
    if ((err = ym_writeq_start(&d->q, run_job, d, "ym-disk-writer")) != YM_OK)
        goto fail;
    publish(d);
    *out = d;
    return YM_OK;
fail:
    for (size_t i = 0; d->buckets != NULL && i < d->n_buckets; i++)
        while (d->buckets[i] != NULL)
            index_drop(d, d->buckets[i]);
    free(d->buckets);
    ym_state_free(d->like);
    free(d->dir);
    free(d);
    return err;
}

void ym_disktier_close(ym_disktier_t *d)
{
    if (d == NULL)
        return;
    ym_writeq_stop(&d->q); /* what is queued is written first */
    while (d->head != NULL)
        index_drop(d, d->head);
    free(d->buckets);
    ym_state_free(d->like);
    free(d->dir);
    sodium_memzero(d->mac_key, sizeof(d->mac_key));
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void ym_disktier_get_stats(ym_disktier_t *d, ym_disktier_stats *out)
{
    pthread_mutex_lock(&d->lock);
    *out = (ym_disktier_stats){d->bytes, d->budget, (int)d->n_files, d->writes, d->hits,
                               d->misses, d->refused, d->errors, d->evictions};
    pthread_mutex_unlock(&d->lock);
}

void ym_disktier_mac_key(const ym_disktier_t *d, unsigned char out[32])
{
    memcpy(out, d->mac_key, 32);
}
