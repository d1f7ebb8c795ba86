/* server/store.c - the adapter directory on disk (layout and guarantees in store.h). */
#include "server/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* snprintf for paths. Callers keep adapter_dir under 3800 bytes (ym_store_begin and
 * ym_store_scan refuse longer ones) and names under 65, so no path here is truncated. */
__attribute__((format(printf, 3, 4))) static void pathf(char *dst, size_t cap, const char *fmt,
                                                        ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

int ym_store_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > YM_ADAPTER_NAME_MAX || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int valid_file(const char *f, int top)
{
    return strcmp(f, "adapter_config.json") == 0 || strcmp(f, "adapter_model.safetensors") == 0 ||
           strcmp(f, "README.md") == 0 || (top && strcmp(f, "adapter_set.json") == 0);
}

int ym_store_valid_part(const char *path)
{
    const char *slash = strchr(path, '/');
    if (slash == NULL)
        return valid_file(path, 1);
    size_t n = (size_t)(slash - path);
    char sub[YM_ADAPTER_NAME_MAX + 1];
    if (n == 0 || n > YM_ADAPTER_NAME_MAX)
        return 0;
    memcpy(sub, path, n);
    sub[n] = '\0';
    return ym_store_valid_name(sub) && strchr(slash + 1, '/') == NULL && valid_file(slash + 1, 0);
}

static int mkdir_p(const char *path)
{
    char tmp[4096];
    if (strlen(path) >= sizeof(tmp))
        return -1;
    pathf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

ym_err ym_store_begin(const char *adapter_dir, const char *tenant, char *tmp, size_t cap,
                      ym_diag *diag)
{
    char dir[4096];
    if (strlen(adapter_dir) > 3800)
        return ym_diag_set(diag, YM_EINVAL, "adapter_dir is too long");
    pathf(dir, sizeof(dir), "%s/%s/.tmp", adapter_dir, tenant);
    if (mkdir_p(dir) != 0)
        return ym_diag_set(diag, YM_EIO, "cannot create %s: %s", dir, strerror(errno));
    pathf(tmp, cap, "%s/up-XXXXXX", dir);
    if (strlen(tmp) + 1 >= cap || mkdtemp(tmp) == NULL)
        return ym_diag_set(diag, YM_EIO, "cannot create an upload directory in %s: %s", dir,
                           strerror(errno));
    return YM_OK;
}

int ym_store_open_part(const char *tmp, const char *part, ym_diag *diag)
{
    char path[4096];
    pathf(path, sizeof(path), "%s/%s", tmp, part);
    char *slash = strrchr(path, '/');
    if (slash != NULL && slash > path + strlen(tmp)) {
        *slash = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            ym_diag_set(diag, YM_EIO, "cannot create %s: %s", path, strerror(errno));
            return -1;
        }
        *slash = '/';
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        ym_diag_set(diag, errno == EEXIST ? YM_EINVAL : YM_EIO, "%s: %s", part,
                    errno == EEXIST ? "sent twice" : strerror(errno));
    return fd;
}

int ym_store_close_part(int fd)
{
    int rc = fsync(fd);
    if (close(fd) != 0)
        rc = -1;
    return rc;
}

static int sync_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    int fd = open(p, O_RDONLY | O_CLOEXEC | (flag == FTW_D || flag == FTW_DP ? O_DIRECTORY : 0));
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

void ym_store_sync(const char *dir)
{
    nftw(dir, sync_entry, 16, FTW_PHYS | FTW_DEPTH);
}

static size_t walk_bytes;
static int add_bytes(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    if (flag == FTW_F && S_ISREG(st->st_mode))
        walk_bytes += (size_t)st->st_size;
    return 0;
}

size_t ym_store_bytes(const char *dir) /* not reentrant: one caller at a time (the pool) */
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&lock);
    walk_bytes = 0;
    nftw(dir, add_bytes, 16, FTW_PHYS);
    size_t n = walk_bytes;
    pthread_mutex_unlock(&lock);
    return n;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p) != 0 ? 0 : 0; /* best effort: keep going */
}

void ym_store_rmtree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static uint64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* The version a symlink <tenant>/<name> points to (".v/<name>.<version>"), or 0. */
static uint64_t link_version(const char *link, const char *name)
{
    char target[4096];
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return 0;
    target[n] = '\0';
    char prefix[YM_ADAPTER_NAME_MAX + 8];
    snprintf(prefix, sizeof(prefix), ".v/%s.", name);
    size_t pl = strlen(prefix);
    if (strncmp(target, prefix, pl) != 0)
        return 0;
    char *end;
    unsigned long long v = strtoull(target + pl, &end, 10);
    return *end == '\0' ? (uint64_t)v : 0;
}

ym_err ym_store_commit(const char *adapter_dir, const char *tenant, const char *name,
                       const char *tmp, uint64_t *version, uint64_t *replaced, ym_diag *diag)
{
    char tdir[4096], vdir[4096], link[4096], newlink[4096], target[512], old[4096];
    pathf(tdir, sizeof(tdir), "%s/%s", adapter_dir, tenant);
    pathf(link, sizeof(link), "%s/%s", tdir, name);
    char vparent[4096];
    pathf(vparent, sizeof(vparent), "%s/.v", tdir);
    if (mkdir_p(vparent) != 0)
        return ym_diag_set(diag, YM_EIO, "cannot create %s: %s", vparent, strerror(errno));
    uint64_t prev = link_version(link, name);
    uint64_t v = now_ms();
    if (v <= prev)
        v = prev + 1; /* versions only grow, even if the clock does not */
    pathf(vdir, sizeof(vdir), "%s/%s.%llu", vparent, name, (unsigned long long)v);
    chmod(tmp, 0755); /* mkdtemp made it 0700; replicas may run as other users */
    if (fsync_dir(tmp) != 0 || rename(tmp, vdir) != 0)
        return ym_diag_set(diag, YM_EIO, "cannot store the adapter: %s", strerror(errno));
    pathf(target, sizeof(target), ".v/%s.%llu", name, (unsigned long long)v);
    pathf(newlink, sizeof(newlink), "%s/.tmp/link-%s.%llu", tdir, name, (unsigned long long)v);
    unlink(newlink);
    if (symlink(target, newlink) != 0 || rename(newlink, link) != 0) {
        ym_diag_set(diag, YM_EIO, "cannot publish the adapter: %s", strerror(errno));
        ym_store_rmtree(vdir);
        return YM_EIO;
    }
    fsync_dir(vparent);
    fsync_dir(tdir);
    if (prev != 0) {
        pathf(old, sizeof(old), "%s/%s.%llu", vparent, name, (unsigned long long)prev);
        ym_store_rmtree(old);
    }
    *version = v;
    *replaced = prev;
    return YM_OK;
}

ym_err ym_store_remove(const char *adapter_dir, const char *tenant, const char *name,
                       ym_diag *diag)
{
    char link[4096], vdir[4096];
    pathf(link, sizeof(link), "%s/%s/%s", adapter_dir, tenant, name);
    uint64_t v = link_version(link, name);
    if (v == 0)
        return ym_diag_set(diag, YM_ENOENT, "no adapter %s", name);
    if (unlink(link) != 0)
        return ym_diag_set(diag, YM_EIO, "cannot remove %s: %s", name, strerror(errno));
    char tdir[4096];
    pathf(tdir, sizeof(tdir), "%s/%s", adapter_dir, tenant);
    fsync_dir(tdir);
    pathf(vdir, sizeof(vdir), "%s/.v/%s.%llu", tdir, name, (unsigned long long)v);
    ym_store_rmtree(vdir);
    return YM_OK;
}

ym_err ym_store_scan(const char *adapter_dir, const char *tenant, int clean_tmp, ym_stored **out,
                     int *n, ym_diag *diag)
{
    *out = NULL;
    *n = 0;
    char tdir[4096];
    if (strlen(adapter_dir) > 3800)
        return ym_diag_set(diag, YM_EINVAL, "adapter_dir is too long");
    pathf(tdir, sizeof(tdir), "%s/%s", adapter_dir, tenant);
    if (clean_tmp) {
        char t[4200];
        pathf(t, sizeof(t), "%s/.tmp", tdir);
        ym_store_rmtree(t);
    }
    DIR *d = opendir(tdir);
    if (d == NULL)
        return errno == ENOENT ? YM_OK
                               : ym_diag_set(diag, YM_EIO, "cannot read %s: %s", tdir,
                                             strerror(errno));
    int cap = 0;
    struct dirent *e;
    ym_err err = YM_OK;
    while ((e = readdir(d)) != NULL) {
        if (!ym_store_valid_name(e->d_name))
            continue;
        char link[4400];
        pathf(link, sizeof(link), "%s/%s", tdir, e->d_name);
        uint64_t v = link_version(link, e->d_name);
        if (v == 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            ym_stored *p = realloc(*out, (size_t)cap * sizeof(*p));
            if (p == NULL) {
                err = YM_ENOMEM;
                break;
            }
            *out = p;
        }
        ym_stored *s = &(*out)[(*n)++];
        memcpy(s->name, e->d_name, strlen(e->d_name) + 1); /* valid names are <= 64 bytes */
        s->version = v;
        pathf(s->path, sizeof(s->path), "%s/.v/%s.%llu", tdir, e->d_name,
                 (unsigned long long)v);
    }
    closedir(d);
    if (err != YM_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return err;
}

ym_err ym_store_tenants(const char *adapter_dir, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(adapter_dir);
    if (d == NULL)
        return YM_OK;
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ym_store_valid_name(e->d_name))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **p = realloc(*out, (size_t)cap * sizeof(char *));
            if (p == NULL)
                break;
            *out = p;
        }
        if (((*out)[*n] = strdup(e->d_name)) != NULL)
            (*n)++;
    }
    closedir(d);
    return YM_OK;
}
