/* engine/tokenizer_impl.h - the loaded tokenizer's layout, shared by its loader
 * (tokenizer_json.c: tokenizer.json -> ym_tok_t) and its encoder/decoder (tokenizer.c).
 *
 * Internal to engine/tokenizer*.c: the containers (string map, merge map, added-token trie) and
 * struct ym_tok. Everything here is static inline, so each file takes what it uses. */
#ifndef YM_ENGINE_TOKENIZER_IMPL_H
#define YM_ENGINE_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/tokenizer.h"

/* Ids beyond this much past the number of entries are rejected: a table per id is allocated,
 * and a tiny file must not make us allocate gigabytes. */
#define MAX_ID_SLACK    65536
#define MAX_NORM        16 /* normalizer steps after flattening Sequence */
#define MAX_PRE         8  /* pre-tokenizer steps */
#define MAX_DEPTH       8  /* nesting of Sequence */
#define CACHE_WORD_MAX  64
#define CACHE_SLOTS_MAX (1u << 17)

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWER };
enum { PRE_PREFIX_SPACE, PRE_SPLIT_GPT2 };
enum { INIT_DROP, INIT_ID, INIT_FALLBACK, INIT_UNK };

/* ---- small containers -------------------------------------------------------------------- */

/* The tree's growable buffer (engine/buf.h). */
typedef ym_buf buf;



static inline uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)s[i] << (8 * i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 32;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 29;
    return h;
}

static inline uint32_t pow2_at_least(size_t n)
{
    uint32_t c = 16;
    while (c < n && c < (1u << 30))
        c <<= 1;
    return c;
}

/* String -> id, open addressing; the keys live in a pool the caller passes to each call. */
typedef struct sslot {
    uint32_t hash;
    int32_t id; /* -1: empty */
    uint32_t off;
    uint32_t len;
} sslot;

typedef struct smap {
    sslot *slot; /* owned; mask + 1 entries */
    uint32_t mask;
} smap;

static inline ym_err smap_init(smap *m, size_t n)
{
    uint32_t cap = pow2_at_least(n * 2 + 1);
    m->slot = malloc((size_t)cap * sizeof(sslot));
    if (m->slot == NULL)
        return YM_ENOMEM;
    for (uint32_t i = 0; i < cap; i++)
        m->slot[i].id = -1;
    m->mask = cap - 1;
    return YM_OK;
}

static inline int32_t smap_get(const smap *m, const char *pool, const void *key, size_t len)
{
    if (m->slot == NULL)
        return -1;
    uint32_t h = (uint32_t)hash_bytes(key, len);
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const sslot *s = &m->slot[i];
        if (s->id < 0)
            return -1;
        if (s->hash == h && s->len == len && memcmp(pool + s->off, key, len) == 0)
            return s->id;
    }
}

/* Inserts unless the key is there; returns the id the key has now. The map was sized for it. */
static inline int32_t smap_put(smap *m, const char *pool, uint32_t off, uint32_t len, int32_t id)
{
    uint32_t h = (uint32_t)hash_bytes(pool + off, len);
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        sslot *s = &m->slot[i];
        if (s->id < 0) {
            *s = (sslot){.hash = h, .id = id, .off = off, .len = len};
            return id;
        }
        if (s->hash == h && s->len == len && memcmp(pool + s->off, pool + off, len) == 0)
            return s->id;
    }
}

/* (left id, right id) -> (rank, merged id). */
typedef struct mslot {
    uint64_t key;
    uint32_t rank;
    int32_t new_id; /* -1: empty */
} mslot;

typedef struct mmap_t {
    mslot *slot; /* owned */
    uint32_t mask;
} mmap_t;

static inline uint32_t mhash(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

/* Hot path: one lookup per adjacent pair in BPE. */
static inline const mslot *merge_get(const mmap_t *m, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = mhash(key, m->mask);; i = (i + 1) & m->mask) {
        const mslot *s = &m->slot[i];
        if (s->new_id < 0)
            return NULL;
        if (s->key == key)
            return s;
    }
}

/* A later duplicate of a merge replaces the earlier, as HF's HashMap collect does. */
static inline void merge_put(mmap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = mhash(key, m->mask);; i = (i + 1) & m->mask) {
        mslot *s = &m->slot[i];
        if (s->new_id < 0 || s->key == key) {
            *s = (mslot){.key = key, .rank = rank, .new_id = new_id};
            return;
        }
    }
}

/* ---- the tokenizer ----------------------------------------------------------------------- */

typedef struct atok { /* an added token */
    uint32_t off;     /* content in tok->apool */
    uint32_t len;
    int32_t id;
    bool single_word;
    bool lstrip;
    bool rstrip;
    bool normalized;
    bool special;
} atok;

typedef struct tnode {
    int32_t child;   /* first child, -1 */
    int32_t sibling; /* next sibling, -1 */
    int32_t tok;     /* index into tok->added of the token ending here, -1 */
    uint8_t byte;
} tnode;

typedef struct trie { /* added-token contents, for leftmost-longest matching */
    tnode *node;      /* owned; node 0 is the root */
    uint32_t n_node;
    uint32_t cap_node;
    int32_t first[256]; /* root's child per byte, -1 */
    int n_tok;
} trie;

typedef struct idinfo {
    uint32_t off; /* token bytes in tok->bytes */
    uint32_t len;
    int32_t added; /* index into tok->added, -1 */
    bool present;
} idinfo;

typedef struct byteinit { /* how one input byte starts a BPE word */
    uint8_t kind;         /* INIT_* */
    uint8_t n;            /* ids used for INIT_FALLBACK */
    int32_t id[2];
} byteinit;

struct ym_tok {
    int n_vocab;  /* max id + 1 */
    idinfo *info; /* owned; [n_vocab] */
    buf bytes;    /* token bytes after the byte-level decoder, per info[] */
    char *names;  /* owned; model.vocab keys as written (byte-level alphabet) */
    smap vocab;   /* names -> id */
    smap raw;     /* token bytes -> id, built only for ignore_merges */
    buf apool;    /* added-token contents */
    atok *added;  /* owned; [n_added] */
    int n_added;
    smap added_names; /* apool -> id */
    trie trie_raw;    /* added tokens with normalized=false, matched on the raw text */
    trie trie_norm;   /* normalized=true, matched on normalized text */
    mmap_t merges;
    byteinit init[256];
    int32_t unk_id;
    bool fuse_unk;
    bool byte_fallback;
    bool ignore_merges;
    uint8_t norm[MAX_NORM];
    int n_norm;
    uint8_t pre[MAX_PRE];
    int n_pre;
    int32_t eos_id;
};

/* GPT-2's byte <-> unicode map: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * take the code points from U+0100 up, in byte order. */
static inline uint32_t byte_to_cp(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
        return b;
    unsigned k = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE)))
            k++;
    return 256 + k;
}

/* ---- added tokens ------------------------------------------------------------------------ */

static inline ym_err trie_init(trie *tr)
{
    tr->cap_node = 16;
    tr->node = malloc(tr->cap_node * sizeof(tnode));
    if (tr->node == NULL)
        return YM_ENOMEM;
    tr->node[0] = (tnode){.child = -1, .sibling = -1, .tok = -1};
    tr->n_node = 1;
    for (int i = 0; i < 256; i++)
        tr->first[i] = -1;
    return YM_OK;
}

static inline ym_err trie_new_node(trie *tr, uint8_t byte, int32_t *out)
{
    if (tr->n_node == tr->cap_node) {
        if (tr->cap_node > INT32_MAX / 2)
            return YM_ENOMEM;
        tnode *nn = realloc(tr->node, (size_t)tr->cap_node * 2 * sizeof(tnode));
        if (nn == NULL)
            return YM_ENOMEM;
        tr->node = nn;
        tr->cap_node *= 2;
    }
    tr->node[tr->n_node] = (tnode){.child = -1, .sibling = -1, .tok = -1, .byte = byte};
    *out = (int32_t)tr->n_node++;
    return YM_OK;
}

/* Adds a pattern; the first token added with a given pattern keeps it. */
static inline ym_err trie_add(trie *tr, const unsigned char *s, size_t n, int tok)
{
    if (n == 0)
        return YM_OK;
    int32_t cur;
    ym_err err;
    if (tr->first[s[0]] < 0) {
        if ((err = trie_new_node(tr, s[0], &cur)) != YM_OK)
            return err;
        tr->first[s[0]] = cur;
    }
    cur = tr->first[s[0]];
    for (size_t i = 1; i < n; i++) {
        int32_t c = tr->node[cur].child;
        while (c >= 0 && tr->node[c].byte != s[i])
            c = tr->node[c].sibling;
        if (c < 0) {
            if ((err = trie_new_node(tr, s[i], &c)) != YM_OK)
                return err;
            tr->node[c].sibling = tr->node[cur].child;
            tr->node[cur].child = c;
        }
        cur = c;
    }
    if (tr->node[cur].tok < 0) {
        tr->node[cur].tok = tok;
        tr->n_tok++;
    }
    return YM_OK;
}

/* Leftmost-longest match at or after `from`: *at, *len and the token index, or -1. */
static inline int trie_find(const trie *tr, const unsigned char *s, size_t n, size_t from, size_t *at,
                     size_t *len)
{
    for (size_t i = from; i < n; i++) {
        int32_t cur = tr->first[s[i]];
        if (cur < 0)
            continue;
        int best = -1;
        size_t best_len = 0;
        size_t j = i + 1;
        for (;;) {
            if (tr->node[cur].tok >= 0) {
                best = tr->node[cur].tok;
                best_len = j - i;
            }
            if (j == n)
                break;
            int32_t c = tr->node[cur].child;
            while (c >= 0 && tr->node[c].byte != s[j])
                c = tr->node[c].sibling;
            if (c < 0)
                break;
            cur = c;
            j++;
        }
        if (best >= 0) {
            *at = i;
            *len = best_len;
            return best;
        }
    }
    return -1;
}


#endif
