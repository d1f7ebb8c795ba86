/* engine/fileio.h - reading a small file whole (config.json, adapter_config.json, a tenants
 * file): one bounded read, the errors every caller reports the same way. Any thread. */
#ifndef YM_ENGINE_FILEIO_H
#define YM_ENGINE_FILEIO_H
#include <stddef.h>

#include "engine/err.h"

/* Read path, at most limit bytes. New NUL-terminated buffer in *out (free()), its length in
 * *len. A missing path -> YM_ENOENT, larger than limit -> YM_EFORMAT, a read error -> YM_EIO;
 * diag names the path. On failure *out is NULL. */
ym_err ym_read_file(const char *path, size_t limit, char **out, size_t *len, ym_diag *diag);

#endif
