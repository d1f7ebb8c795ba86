/* engine/fileio.c - bounded whole-file reads (see fileio.h). */
#include "engine/fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ym_err ym_read_file(const char *path, size_t limit, char **out, size_t *len, ym_diag *diag)
{
    *out = NULL;
    *len = 0;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        int e = errno;
        return ym_diag_set(diag, e == ENOENT || e == ENOTDIR ? YM_ENOENT : YM_EIO, "%s: %s",
                           path, strerror(e));
    }
    char *buf = malloc(limit + 1);
    if (buf == NULL) {
        fclose(fp);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, limit + 1, fp);
    int failed = ferror(fp);
    fclose(fp);
    if (failed || n > limit) {
        free(buf);
        return failed ? ym_diag_set(diag, YM_EIO, "%s: read error", path)
                      : ym_diag_set(diag, YM_EFORMAT, "%s: larger than %zu bytes", path, limit);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return YM_OK;
}
