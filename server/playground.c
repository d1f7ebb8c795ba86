/* server/playground.c - finds an embedded playground file by its path, and compares a
 * browser's If-None-Match with its ETag (server/playground.h).
 *
 * Owns: nothing (the files are the generated, static ym_playground_assets). Runs: any thread
 * (the loop thread in the daemon). Must not: allocate, or read past the header's NUL. */
#include "server/playground.h"

#include <string.h>

const ym_asset *ym_playground_find(const char *path)
{
    if (path == NULL)
        return NULL;
    for (size_t i = 0; i < ym_playground_n_assets; i++)
        if (strcmp(ym_playground_assets[i].path, path) == 0)
            return &ym_playground_assets[i];
    return NULL;
}

/* If-None-Match = "*" / #entity-tag;  entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE
 * (RFC 9110 §8.8.3 and §13.1.2). The list's commas and spaces (OWS) separate tags; a quote
 * cannot appear inside a tag, so the next quote ends it. */
int ym_etag_match(const char *header, const char *etag)
{
    if (header == NULL || etag == NULL || etag[0] != '"')
        return 0;
    size_t want = strlen(etag) - 2; /* the opaque part between etag's quotes */
    const char *p = header;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            return 0;
        if (*p == '*') {
            const char *q = p + 1;
            while (*q == ' ' || *q == '\t')
                q++;
            return *q == '\0'; /* "*" alone; "*" in a list is malformed */
        }
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        if (*p != '"')
            return 0; /* malformed */
        const char *open = p + 1;
        const char *close = strchr(open, '"');
        if (close == NULL)
            return 0;
        if ((size_t)(close - open) == want && memcmp(open, etag + 1, want) == 0)
            return 1;
        p = close + 1;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != ',' && *p != '\0')
            return 0; /* junk after a tag */
    }
}
