/* tests/fuzz/fuzz_multipart.c - arbitrary bytes as a multipart/form-data upload body, fed in
 * pieces whose sizes come from the input itself, and as the Content-Type header that names
 * the boundary. Must never crash or leak; every byte handed to a part comes from the input,
 * so the parts never add up to more than the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/multipart.h"

typedef struct {
    size_t total;
    int open;
} seen;

static int on_begin(void *arg, const char *name, ym_diag *diag)
{
    seen *s = arg;
    YM_ASSERT(!s->open && name != NULL && name[0] != '\0');
    s->open = 1;
    return name[0] == '!' ? -1 : 0; /* exercise the refusal path too */
}

static int on_data(void *arg, const char *d, size_t n, ym_diag *diag)
{
    seen *s = arg;
    YM_ASSERT(s->open && n > 0);
    s->total += n;
    return 0;
}

static int on_end(void *arg, ym_diag *diag)
{
    seen *s = arg;
    YM_ASSERT(s->open);
    s->open = 0;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ym_mp_cb cb = {on_begin, on_data, on_end};
    seen s = {0, 0};
    ym_mp_t *mp = NULL;
    ym_diag diag = {{0}, {0}};
    YM_ASSERT(ym_mp_new("multipart/form-data; boundary=zz", &cb, &s, &mp, &diag) == YM_OK);
    size_t step = size > 0 ? (size_t)data[0] % 17 + 1 : 1;
    ym_err e = YM_OK;
    for (size_t off = 0; off < size && e == YM_OK; off += step)
        e = ym_mp_feed(mp, (const char *)data + off, size - off < step ? size - off : step, &diag);
    if (e == YM_OK)
        ym_mp_finish(mp, &diag);
    YM_ASSERT(s.total <= size);
    ym_mp_free(mp);

    /* The input's first line as the Content-Type header (a client sends it too); when it is
     * accepted, a small body with two parts goes through the parser it set up. */
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hlen = nl ? (size_t)(nl - data) : size;
    char *ctype = malloc(hlen + 1);
    YM_ASSERT(ctype != NULL);
    memcpy(ctype, data, hlen);
    ctype[hlen] = '\0'; /* a NUL inside ends the header early, as in MHD's copy */
    seen h = {0, 0};
    if (ym_mp_new(ctype, &cb, &h, &mp, &diag) == YM_OK) {
        static const char body[] = "--zz\r\nContent-Disposition: form-data; name=a\r\n\r\nx"
                                   "\r\n--zz--\r\n";
        if (ym_mp_feed(mp, body, sizeof(body) - 1, &diag) == YM_OK)
            ym_mp_finish(mp, &diag);
        YM_ASSERT(h.total <= sizeof(body));
        ym_mp_free(mp);
    }
    free(ctype);
    return 0;
}
