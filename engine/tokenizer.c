/* engine/tokenizer.c - Hugging Face tokenizer.json, byte-level BPE (GPT-NeoX / Mamba family).
 *
 * Owns: reading tokenizer.json (jansson) into an immutable ym_tok_t, encoding text to ids and
 * decoding ids to text with the ids Hugging Face tokenizers gives (docs/ARCHITECTURE.md §3).
 * Encoding follows HF's TokenizerImpl::encode_single_sequence step by step:
 *   1. invalid UTF-8 becomes U+FFFD, one per maximal invalid subpart (String::from_utf8_lossy);
 *   2. added tokens with normalized=false are split out of the raw text, leftmost-longest;
 *   3. each piece left is normalized (NFC, ...), then added tokens with normalized=true are
 *      split out of it (their contents were normalized the same way at load);
 *   4. each piece left is pre-tokenized (ByteLevel: prefix space, the GPT-2 split regex, written
 *      out by hand below) and every pre-token goes through BPE: merge the adjacent pair of lowest
 *      rank, the leftmost on ties (HF's Word::merge_all), with a per-call cache of pre-tokens.
 * No post-processor runs: the ids are encode(text, add_special_tokens=False). For GPT-NeoX that is
 * also what add_special_tokens=True gives: its ByteLevel post-processor adds no BOS or EOS.
 *
 * Threads: a loaded ym_tok_t is never written again. Encode and decode keep all their scratch,
 * the pre-token cache included, in a per-call context, so any thread may call them at once.
 * Must not: keep mutable state in ym_tok_t; include uv.h (engine/ is loop-free,
 * docs/ARCHITECTURE.md §1).
 *
 * Where this differs from HF on purpose (none of it matters for GPT-NeoX; encode ids never):
 *   - an added token decodes to its content as written in the file. HF decodes the string it
 *     keeps for the token (for a normalized=true token, HF 0.23 keeps the normalized content)
 *     through the ByteLevel decoder, which turns a content of byte-level alphabet characters
 *     into the bytes they stand for ("caf\u00e9" becomes "caf" + U+FFFD, "\u0120x" becomes " x");
 *   - an added token's JSON id is kept; HF takes the vocab's id when the content is in the
 *     vocab (we reject a file where the two differ) and numbers the others itself;
 *   - decoder null is taken as ByteLevel (HF would join the tokens with spaces);
 *   - ids more than MAX_ID_SLACK past the number of tokens are rejected;
 *   - Unicode tables are utf8proc's: its Unicode version (13 for utf8proc 2.6) may lag HF's, so
 *     characters assigned later may normalize or classify differently. */
#include "engine/tokenizer.h"

#include "engine/buf.h"
#include "engine/utf8.h"
#include "engine/tokenizer_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

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

ym_err ym_ids_push(ym_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 16;
        if (cap > SIZE_MAX / sizeof(int32_t))
            return YM_ENOMEM;
        int32_t *v = realloc(ids->v, cap * sizeof(int32_t));
        if (v == NULL)
            return YM_ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return YM_OK;
}

void ym_ids_deinit(ym_ids *ids)
{
    if (ids == NULL)
        return;
    free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

static uint64_t hash_bytes(const void *p, size_t n)
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

static uint32_t pow2_at_least(size_t n)
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

static ym_err smap_init(smap *m, size_t n)
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

static int32_t smap_get(const smap *m, const char *pool, const void *key, size_t len)
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
static int32_t smap_put(smap *m, const char *pool, uint32_t off, uint32_t len, int32_t id)
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
static void merge_put(mmap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
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
static uint32_t byte_to_cp(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
        return b;
    unsigned k = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE)))
            k++;
    return 256 + k;
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* UTF-8 comes from engine/utf8.h. */
static inline int32_t utf8_cp(const unsigned char *s, size_t i, size_t *len)
{
    return ym_utf8_decode(s + i, len);
}

/* String::from_utf8_lossy into out (appended). */
static ym_err utf8_lossy(const unsigned char *s, size_t n, buf *out)
{
    ym_err err;
    ym_utf8_lossy(out, s, n, true, &err);
    return err;
}

/* Unicode White_Space, which is both Rust's char::is_whitespace/regex \s and Oniguruma's \s. */
static bool is_space_cp(int32_t c)
{
    if (c < 0x80)
        return c == ' ' || (c >= 9 && c <= 13);
    if (c == 0x85)
        return true;
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL ||
           cat == UTF8PROC_CATEGORY_ZP;
}

/* Rust regex \w (Unicode): Alphabetic, marks, decimal digits, connector punctuation, joiners;
 * approximated with general categories. Only single_word added tokens ask. */
static bool is_word_cp(int32_t c)
{
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_';
    if (c == 0x200C || c == 0x200D)
        return true;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* ---- per-call encoding context ----------------------------------------------------------- */

typedef struct sym {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len; /* bytes covered; 0 once merged into its left neighbour */
} sym;

typedef struct hent {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} hent;

typedef struct wslot {
    uint32_t hash;
    uint32_t koff; /* key in keys */
    uint32_t klen; /* 0: empty */
    uint32_t ioff; /* ids in idv */
    uint32_t nids;
} wslot;

typedef struct wcache { /* pre-token bytes -> ids, for one encode call */
    wslot *slot;        /* owned */
    uint32_t mask;
    uint32_t n;
    bool full;
    buf keys;
    int32_t *idv; /* owned */
    size_t n_idv;
    size_t cap_idv;
} wcache;

typedef struct enc {
    const ym_tok_t *tok; /* borrowed */
    ym_ids *ids;         /* borrowed; appended to */
    buf norm[2];
    buf pre[MAX_PRE];
    sym *sym;
    size_t cap_sym;
    hent *heap;
    size_t cap_heap;
    wcache cache;
} enc;

static void enc_deinit(enc *e)
{
    for (int i = 0; i < 2; i++)
        free(e->norm[i].p);
    for (int i = 0; i < MAX_PRE; i++)
        free(e->pre[i].p);
    free(e->sym);
    free(e->heap);
    free(e->cache.slot);
    free(e->cache.keys.p);
    free(e->cache.idv);
}

/* ---- normalizers ------------------------------------------------------------------------- */

static bool all_ascii(const unsigned char *s, size_t n)
{
    unsigned char acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= s[i];
    return acc < 0x80;
}

/* Rust's char::to_lowercase, applied per character (no final-sigma context, as HF's
 * NormalizedString::lowercase). Only U+0130 lowercases to more than one character. */
static ym_err lowercase(const unsigned char *s, size_t n, buf *out)
{
    out->len = 0;
    ym_err err = ym_buf_reserve(out, n);
    if (err != YM_OK)
        return err;
    size_t i = 0;
    while (i < n) {
        size_t len;
        int32_t c = utf8_cp(s, i, &len);
        i += len;
        unsigned char tmp[8];
        size_t k;
        if (c < 0x80) {
            tmp[0] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
            k = 1;
        } else if (c == 0x130) {
            memcpy(tmp, "i\xCC\x87", 3);
            k = 3;
        } else {
            k = (size_t)utf8proc_encode_char(utf8proc_tolower(c), tmp);
        }
        if ((err = ym_buf_put(out, tmp, k)) != YM_OK)
            return err;
    }
    return YM_OK;
}

/* Runs the normalizer steps over s[0..n) (valid UTF-8). The result is either s itself or one of
 * e->norm[]; it stays valid until the next call. */
static ym_err normalize(enc *e, const ym_tok_t *t, const char *s, size_t n, const char **res,
                        size_t *res_n)
{
    const unsigned char *cur = (const unsigned char *)s;
    size_t cur_n = n;
    int which = 0;
    bool ascii = all_ascii(cur, cur_n);
    for (int k = 0; k < t->n_norm; k++) {
        buf *out = &e->norm[which];
        ym_err err;
        if (t->norm[k] == NORM_LOWER) {
            if ((err = lowercase(cur, cur_n, out)) != YM_OK)
                return err;
        } else {
            if (ascii) /* every Unicode normal form leaves ASCII as it is */
                continue;
            utf8proc_option_t opt = UTF8PROC_STABLE;
            switch (t->norm[k]) {
            case NORM_NFC:
                opt |= UTF8PROC_COMPOSE;
                break;
            case NORM_NFD:
                opt |= UTF8PROC_DECOMPOSE;
                break;
            case NORM_NFKC:
                opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
                break;
            default:
                opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
                break;
            }
            if (cur_n > (size_t)(PTRDIFF_MAX / 8))
                return YM_ENOMEM;
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t m = utf8proc_map(cur, (utf8proc_ssize_t)cur_n, &dst, opt);
            if (m < 0) /* input is valid UTF-8, so only memory can run out */
                return YM_ENOMEM;
            out->len = 0;
            err = ym_buf_put(out, dst, (size_t)m);
            free(dst);
            if (err != YM_OK)
                return err;
        }
        cur = (const unsigned char *)out->p;
        cur_n = out->len;
        ascii = all_ascii(cur, cur_n);
        which ^= 1;
    }
    *res = (const char *)cur;
    *res_n = cur_n;
    return YM_OK;
}

/* ---- BPE ---------------------------------------------------------------------------------- */

static ym_err push_ids(ym_ids *ids, const int32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ym_err err = ym_ids_push(ids, v[i]);
        if (err != YM_OK)
            return err;
    }
    return YM_OK;
}

static bool hent_less(const hent *a, const hent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(hent *h, size_t *n, hent x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hent_less(&x, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static hent heap_pop(hent *h, size_t *n)
{
    hent top = h[0];
    hent x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && hent_less(&h[c + 1], &h[c]))
            c++;
        if (!hent_less(&h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = x;
    return top;
}

static const int32_t *cache_get(const wcache *c, const unsigned char *s, size_t n, uint32_t h,
                                uint32_t *nids)
{
    if (c->slot == NULL)
        return NULL;
    for (uint32_t i = h & c->mask;; i = (i + 1) & c->mask) {
        const wslot *w = &c->slot[i];
        if (w->klen == 0)
            return NULL;
        if (w->hash == h && w->klen == n && memcmp(c->keys.p + w->koff, s, n) == 0) {
            *nids = w->nids;
            return c->idv + w->ioff;
        }
    }
}

static void cache_place(wcache *c, wslot w)
{
    for (uint32_t i = w.hash & c->mask;; i = (i + 1) & c->mask)
        if (c->slot[i].klen == 0) {
            c->slot[i] = w;
            return;
        }
}

/* Best effort: a failed allocation only means the word is not cached. */
static void cache_put(wcache *c, const unsigned char *s, size_t n, uint32_t h, const int32_t *v,
                      size_t nv)
{
    if (c->full)
        return;
    if (c->slot == NULL || (c->n + 1) * 2 > c->mask + 1) {
        uint32_t cap = c->slot ? (c->mask + 1) * 2 : 1024;
        if (cap > CACHE_SLOTS_MAX) {
            c->full = true;
            return;
        }
        wslot *ns = calloc(cap, sizeof(wslot));
        if (ns == NULL) {
            c->full = true;
            return;
        }
        wslot *old = c->slot;
        uint32_t old_cap = c->slot ? c->mask + 1 : 0;
        c->slot = ns;
        c->mask = cap - 1;
        for (uint32_t i = 0; i < old_cap; i++)
            if (old[i].klen != 0)
                cache_place(c, old[i]);
        free(old);
    }
    if (c->n_idv + nv > c->cap_idv) {
        size_t cap = c->cap_idv ? c->cap_idv * 2 : 4096;
        while (cap < c->n_idv + nv)
            cap *= 2;
        int32_t *v2 = realloc(c->idv, cap * sizeof(int32_t));
        if (v2 == NULL) {
            c->full = true;
            return;
        }
        c->idv = v2;
        c->cap_idv = cap;
    }
    size_t koff = c->keys.len;
    if (ym_buf_put(&c->keys, s, n) != YM_OK || koff > UINT32_MAX || c->n_idv > UINT32_MAX) {
        c->full = true;
        return;
    }
    memcpy(c->idv + c->n_idv, v, nv * sizeof(int32_t));
    cache_place(c, (wslot){.hash = h,
                           .koff = (uint32_t)koff,
                           .klen = (uint32_t)n,
                           .ioff = (uint32_t)c->n_idv,
                           .nids = (uint32_t)nv});
    c->n_idv += nv;
    c->n++;
}

static ym_err sym_add(enc *e, size_t *n, int32_t id, uint32_t len)
{
    if (*n == e->cap_sym) {
        size_t cap = e->cap_sym ? e->cap_sym * 2 : 64;
        sym *s = realloc(e->sym, cap * sizeof(sym));
        if (s == NULL)
            return YM_ENOMEM;
        e->sym = s;
        e->cap_sym = cap;
    }
    e->sym[*n] = (sym){.id = id, .prev = (int32_t)*n - 1, .next = (int32_t)*n + 1, .len = len};
    (*n)++;
    return YM_OK;
}

/* BPE of one pre-token (raw bytes; each byte is one byte-level character). Hot path. */
static ym_err bpe_word(enc *e, const unsigned char *s, size_t n)
{
    const ym_tok_t *t = e->tok;
    ym_err err;
    if (n > INT32_MAX / 2)
        return YM_ENOMEM;
    uint32_t h = 0;
    bool cacheable = n <= CACHE_WORD_MAX;
    if (cacheable) {
        h = (uint32_t)hash_bytes(s, n);
        uint32_t nids;
        const int32_t *v = cache_get(&e->cache, s, n, h, &nids);
        if (v != NULL)
            return push_ids(e->ids, v, nids);
    }
    if (t->ignore_merges) {
        int32_t id = smap_get(&t->raw, t->bytes.p, s, n);
        if (id >= 0)
            return ym_ids_push(e->ids, id);
    }

    /* Initial symbols, as HF's BPE::merge_word: a character missing from the vocab becomes its
     * <0xXX> byte tokens (byte_fallback), else unk (fused if asked), else it is dropped. A
     * pending unk is flushed only by a character found in the vocab, as in HF. */
    size_t ns = 0;
    int32_t unk_len = 0;
    for (size_t i = 0; i < n; i++) {
        const byteinit *bi = &t->init[s[i]];
        switch (bi->kind) {
        case INIT_ID:
            if (unk_len > 0) {
                if ((err = sym_add(e, &ns, t->unk_id, (uint32_t)unk_len)) != YM_OK)
                    return err;
                unk_len = 0;
            }
            if ((err = sym_add(e, &ns, bi->id[0], 1)) != YM_OK)
                return err;
            break;
        case INIT_FALLBACK:
            for (int k = 0; k < bi->n; k++)
                if ((err = sym_add(e, &ns, bi->id[k], 1)) != YM_OK)
                    return err;
            break;
        case INIT_UNK:
            if (unk_len > 0 && !t->fuse_unk) {
                if ((err = sym_add(e, &ns, t->unk_id, (uint32_t)unk_len)) != YM_OK)
                    return err;
                unk_len = 0;
            }
            unk_len += 1;
            break;
        default:
            break;
        }
    }
    if (unk_len > 0 && (err = sym_add(e, &ns, t->unk_id, (uint32_t)unk_len)) != YM_OK)
        return err;
    if (ns == 0)
        return YM_OK;
    sym *sy = e->sym;
    sy[ns - 1].next = -1;

    /* Merge by (rank, position) from a min-heap; stale entries are recognised because the pair
     * now at their position no longer merges to the same id (HF's Word::merge_all). */
    if (ns > 1) {
        if (e->cap_heap < ns * 2) {
            hent *hp = realloc(e->heap, ns * 2 * sizeof(hent));
            if (hp == NULL)
                return YM_ENOMEM;
            e->heap = hp;
            e->cap_heap = ns * 2;
        }
        hent *heap = e->heap;
        size_t nh = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            const mslot *m = merge_get(&t->merges, sy[i].id, sy[i + 1].id);
            if (m != NULL)
                heap_push(heap, &nh, (hent){m->rank, (uint32_t)i, m->new_id});
        }
        while (nh > 0) {
            hent top = heap_pop(heap, &nh);
            sym *l = &sy[top.pos];
            if (l->len == 0 || l->next < 0)
                continue;
            sym *r = &sy[l->next];
            const mslot *m = merge_get(&t->merges, l->id, r->id);
            if (m == NULL || m->new_id != top.new_id)
                continue;
            l->id = top.new_id;
            l->len += r->len;
            l->next = r->next;
            r->len = 0;
            if (l->next >= 0)
                sy[l->next].prev = (int32_t)top.pos;
            /* Each merge removes one symbol and adds at most two heap entries, so the heap
             * never outgrows 2 * ns. */
            if (l->prev >= 0) {
                const mslot *pm = merge_get(&t->merges, sy[l->prev].id, l->id);
                if (pm != NULL)
                    heap_push(heap, &nh, (hent){pm->rank, (uint32_t)l->prev, pm->new_id});
            }
            if (l->next >= 0) {
                const mslot *nm = merge_get(&t->merges, l->id, sy[l->next].id);
                if (nm != NULL)
                    heap_push(heap, &nh, (hent){nm->rank, top.pos, nm->new_id});
            }
        }
    }

    size_t first = e->ids->n;
    for (int32_t i = 0; i >= 0; i = sy[i].next)
        if ((err = ym_ids_push(e->ids, sy[i].id)) != YM_OK)
            return err;
    if (cacheable)
        cache_put(&e->cache, s, n, h, e->ids->v + first, e->ids->n - first);
    return YM_OK;
}

/* ---- pre-tokenizer ----------------------------------------------------------------------- */

enum { CL_SPACE, CL_L, CL_N, CL_O };

/* Class of the character at s[i] for the GPT-2 regex: \s, \p{L}, \p{N} or anything else. */
static inline int char_class(const unsigned char *s, size_t i, size_t *len)
{
    unsigned c = s[i];
    if (c < 0x80) {
        *len = 1;
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
            return CL_L;
        if (c >= '0' && c <= '9')
            return CL_N;
        if (c == ' ' || (c >= 9 && c <= 13))
            return CL_SPACE;
        return CL_O;
    }
    int32_t cp = utf8_cp(s, i, len);
    if (cp == 0x85)
        return CL_SPACE;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return CL_L;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return CL_N;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return CL_SPACE;
    default:
        return CL_O;
    }
}

static ym_err pretok(enc *e, const char *s, size_t n, int k);

/* The GPT-2 pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * as Oniguruma runs it: at each position the first alternative that matches wins, each
 * repetition greedy. Its alternatives cover every character, so the matches tile the text and
 * each becomes a pre-token (split behaviour Isolated). Hot path. */
static ym_err split_gpt2(enc *e, const char *text, size_t n, int k)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        size_t j, len;
        if (s[i] == '\'' && i + 1 < n) {
            unsigned c1 = s[i + 1];
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                j = i + 2;
                goto emit;
            }
            if (i + 2 < n) {
                unsigned c2 = s[i + 2];
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
                    (c1 == 'l' && c2 == 'l')) {
                    j = i + 3;
                    goto emit;
                }
            }
        }
        int cl = char_class(s, i, &len);
        size_t p = i;
        if (s[i] == ' ' && i + 1 < n) { /* " ?" before a letter, digit or other run */
            size_t len2;
            int cl2 = char_class(s, i + 1, &len2);
            if (cl2 != CL_SPACE) {
                p = i + 1;
                cl = cl2;
                len = len2;
            }
        }
        if (cl != CL_SPACE) {
            j = p + len;
            while (j < n && char_class(s, j, &len) == cl)
                j += len;
            goto emit;
        }
        /* \s+(?!\S): a whitespace run before a non-space gives back its last character, which
         * then starts the next pre-token (" ?\p{L}+"...); a lone one matches \s+ alone. */
        {
            size_t last = i;
            j = i + len;
            while (j < n && char_class(s, j, &len) == CL_SPACE) {
                last = j;
                j += len;
            }
            if (j < n && last > i)
                j = last;
        }
    emit:;
        ym_err err = pretok(e, text + i, j - i, k + 1);
        if (err != YM_OK)
            return err;
        i = j;
    }
    return YM_OK;
}

/* Runs pre-tokenizer steps k.. over one piece; pieces that come out empty are dropped, as HF's
 * PreTokenizedString::split drops them. */
static ym_err pretok(enc *e, const char *s, size_t n, int k)
{
    const ym_tok_t *t = e->tok;
    if (n == 0)
        return YM_OK;
    if (k == t->n_pre)
        return bpe_word(e, (const unsigned char *)s, n);
    if (t->pre[k] == PRE_SPLIT_GPT2)
        return split_gpt2(e, s, n, k);
    /* PRE_PREFIX_SPACE: ByteLevel's add_prefix_space, per piece. */
    if (s[0] == ' ')
        return pretok(e, s, n, k + 1);
    buf *b = &e->pre[k];
    b->len = 0;
    ym_err err;
    if ((err = ym_buf_put(b, " ", 1)) != YM_OK || (err = ym_buf_put(b, s, n)) != YM_OK)
        return err;
    return pretok(e, b->p, b->len, k + 1);
}

/* ---- added tokens ------------------------------------------------------------------------ */

static ym_err trie_init(trie *tr)
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

static ym_err trie_new_node(trie *tr, uint8_t byte, int32_t *out)
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
static ym_err trie_add(trie *tr, const unsigned char *s, size_t n, int tok)
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
static int trie_find(const trie *tr, const unsigned char *s, size_t n, size_t from, size_t *at,
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

typedef ym_err (*gap_fn)(enc *e, const char *s, size_t n);

/* HF's AddedVocabulary::find_matches over one piece: added tokens out, the text between them to
 * `gap`. single_word, lstrip and rstrip look only inside this piece, as HF's do. As in HF, the
 * search goes on from the end of the match, not of the spaces an rstrip token took, so a token
 * found inside those spaces is emitted too (HF's pieces overlap there; the ids are what count). */
static ym_err split_added(enc *e, const trie *tr, const char *text, size_t n, gap_fn gap)
{
    const ym_tok_t *t = e->tok;
    const unsigned char *s = (const unsigned char *)text;
    if (n == 0)
        return YM_OK;
    if (tr->n_tok == 0)
        return gap(e, text, n);
    size_t done = 0, search = 0;
    ym_err err;
    while (search < n) {
        size_t at, len;
        int a = trie_find(tr, s, n, search, &at, &len);
        if (a < 0)
            break;
        const atok *tk = &t->added[a];
        size_t start = at, stop = at + len;
        search = stop;
        if (tk->single_word) {
            size_t cl;
            bool word_before = start > 0 && is_word_cp(utf8_cp(s, ym_utf8_prev(s, start), &cl));
            bool word_after = stop < n && is_word_cp(utf8_cp(s, stop, &cl));
            if (word_before || word_after)
                continue;
        }
        if (tk->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t p = ym_utf8_prev(s, ns), cl;
                if (!is_space_cp(utf8_cp(s, p, &cl)))
                    break;
                ns = p;
            }
            start = ns > done ? ns : done;
        }
        if (tk->rstrip) {
            size_t cl;
            while (stop < n && is_space_cp(utf8_cp(s, stop, &cl)))
                stop += cl;
        }
        if (done < start && (err = gap(e, text + done, start - done)) != YM_OK)
            return err;
        if ((err = ym_ids_push(e->ids, tk->id)) != YM_OK)
            return err;
        done = stop;
    }
    if (done < n)
        return gap(e, text + done, n - done);
    return YM_OK;
}

static ym_err gap_pretok(enc *e, const char *s, size_t n)
{
    return pretok(e, s, n, 0);
}

static ym_err gap_normalize(enc *e, const char *s, size_t n)
{
    const char *ns;
    size_t nn;
    ym_err err = normalize(e, e->tok, s, n, &ns, &nn);
    if (err != YM_OK)
        return err;
    return split_added(e, &e->tok->trie_norm, ns, nn, gap_pretok);
}

ym_err ym_tok_encode(const ym_tok_t *tok, const char *text, size_t len, ym_ids *ids)
{
    if (tok == NULL || ids == NULL || (text == NULL && len > 0))
        return YM_EINVAL;
    size_t n0 = ids->n;
    enc e = {.tok = tok, .ids = ids};
    buf fixed = {0};
    ym_err err = YM_OK;
    if (!ym_utf8_valid((const unsigned char *)text, len)) {
        if ((err = utf8_lossy((const unsigned char *)text, len, &fixed)) != YM_OK)
            goto out;
        text = fixed.p;
        len = fixed.len;
    }
    err = split_added(&e, &tok->trie_raw, text, len, gap_normalize);
out:
    if (err != YM_OK)
        ids->n = n0;
    free(fixed.p);
    enc_deinit(&e);
    return err;
}

ym_err ym__tok_normalize(const ym_tok_t *tok, const char *text, size_t len, char **out,
                         size_t *out_len)
{
    *out = NULL;
    enc e = {.tok = tok};
    buf fixed = {0}, res = {0};
    const char *ns;
    size_t nn;
    ym_err err = utf8_lossy((const unsigned char *)text, len, &fixed);
    if (err == YM_OK && (err = normalize(&e, tok, fixed.p, fixed.len, &ns, &nn)) == YM_OK &&
        (err = ym_buf_put(&res, ns, nn)) == YM_OK) {
        *out = res.p;
        *out_len = res.len;
    }
    free(fixed.p);
    enc_deinit(&e);
    return err;
}

int ym__tok_adds_prefix_space(const ym_tok_t *tok)
{
    for (int k = 0; k < tok->n_pre; k++)
        if (tok->pre[k] == PRE_PREFIX_SPACE)
            return 1;
    return 0;
}

/* ---- decoding and lookups ---------------------------------------------------------------- */

ym_err ym_tok_decode(const ym_tok_t *tok, const int32_t *ids, size_t n, char **text, size_t *len)
{
    *text = NULL;
    if (len != NULL)
        *len = 0;
    if (tok == NULL || (ids == NULL && n > 0))
        return YM_EINVAL;
    buf raw = {0}, out = {0};
    ym_err err = YM_OK;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        const char *b = ym_tok_token_bytes(tok, ids[i], &k);
        if (b == NULL) {
            err = YM_EINVAL;
            goto fail;
        }
        if ((err = ym_buf_put(&raw, b, k)) != YM_OK)
            goto fail;
    }
    /* The decoder's bytes become text the way HF does it: String::from_utf8_lossy. */
    if ((err = utf8_lossy((const unsigned char *)raw.p, raw.len, &out)) != YM_OK ||
        (err = ym_buf_put(&out, "", 0)) != YM_OK)
        goto fail;
    free(raw.p);
    *text = out.p;
    if (len != NULL)
        *len = out.len;
    return YM_OK;
fail:
    free(raw.p);
    free(out.p);
    return err;
}

const char *ym_tok_token_bytes(const ym_tok_t *tok, int32_t id, size_t *len)
{
    if (len != NULL)
        *len = 0;
    if (tok == NULL || id < 0 || id >= tok->n_vocab || !tok->info[id].present)
        return NULL;
    if (len != NULL)
        *len = tok->info[id].len;
    return tok->bytes.p + tok->info[id].off;
}

int ym_tok_n_vocab(const ym_tok_t *tok)
{
    return tok != NULL ? tok->n_vocab : 0;
}

int32_t ym_tok_id(const ym_tok_t *tok, const char *token)
{
    if (tok == NULL || token == NULL)
        return -1;
    size_t n = strlen(token);
    int32_t id = smap_get(&tok->added_names, tok->apool.p, token, n);
    if (id >= 0)
        return id;
    return smap_get(&tok->vocab, tok->names, token, n);
}

int ym_tok_is_special(const ym_tok_t *tok, int32_t id)
{
    if (tok == NULL || id < 0 || id >= tok->n_vocab || tok->info[id].added < 0)
        return 0;
    return tok->added[tok->info[id].added].special;
}

int32_t ym_tok_eos_id(const ym_tok_t *tok)
{
    return tok != NULL ? tok->eos_id : -1;
}

/* ---- loading ----------------------------------------------------------------------------- */

static void trie_deinit(trie *tr)
{
    free(tr->node);
}

void ym_tok_free(ym_tok_t *tok)
{
    if (tok == NULL)
        return;
    free(tok->info);
    free(tok->bytes.p);
    free(tok->names);
    free(tok->vocab.slot);
    free(tok->raw.slot);
    free(tok->apool.p);
    free(tok->added);
    free(tok->added_names.slot);
    trie_deinit(&tok->trie_raw);
    trie_deinit(&tok->trie_norm);
    free(tok->merges.slot);
    free(tok);
}

#define BAD(...) ym_diag_set(diag, YM_EFORMAT, "tokenizer.json: " __VA_ARGS__)

/* Optional boolean member: absent or null gives def. */
static ym_err get_bool(const json_t *obj, const char *key, bool def, bool *out, const char *where,
                       ym_diag *diag)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        *out = def;
        return YM_OK;
    }
    if (!json_is_boolean(v))
        return BAD("%s.%s: not a boolean", where, key);
    *out = json_is_true(v);
    return YM_OK;
}

static const char *type_of(const json_t *obj)
{
    const json_t *ty = json_object_get(obj, "type");
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

static ym_err parse_normalizer(ym_tok_t *t, const json_t *v, const char *where, int depth,
                               ym_diag *diag)
{
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (!json_is_object(v))
        return BAD("%s: not an object", where);
    const char *ty = type_of(v);
    if (ty == NULL)
        return BAD("%s.type: missing or not a string", where);
    if (strcmp(ty, "Sequence") == 0) {
        const json_t *list = json_object_get(v, "normalizers");
        if (!json_is_array(list))
            return BAD("%s.normalizers: not an array", where);
        if (depth >= MAX_DEPTH)
            return BAD("%s: Sequence nested too deeply", where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char sub[256];
            snprintf(sub, sizeof(sub), "%s.normalizers[%zu]", where, i);
            ym_err err = parse_normalizer(t, json_array_get(list, i), sub, depth + 1, diag);
            if (err != YM_OK)
                return err;
        }
        return YM_OK;
    }
    uint8_t op;
    if (strcmp(ty, "NFC") == 0)
        op = NORM_NFC;
    else if (strcmp(ty, "NFD") == 0)
        op = NORM_NFD;
    else if (strcmp(ty, "NFKC") == 0)
        op = NORM_NFKC;
    else if (strcmp(ty, "NFKD") == 0)
        op = NORM_NFKD;
    else if (strcmp(ty, "Lowercase") == 0)
        op = NORM_LOWER;
    else
        return BAD("%s.type: normalizer \"%.64s\" not supported (NFC, NFD, NFKC, NFKD, "
                   "Lowercase, Sequence)",
                   where, ty);
    if (t->n_norm == MAX_NORM)
        return BAD("%s: more than %d normalizers", where, MAX_NORM);
    t->norm[t->n_norm++] = op;
    return YM_OK;
}

static ym_err add_pre(ym_tok_t *t, uint8_t op, const char *where, ym_diag *diag)
{
    if (t->n_pre == MAX_PRE)
        return BAD("%s: more than %d pre-tokenizer steps", where, MAX_PRE);
    t->pre[t->n_pre++] = op;
    return YM_OK;
}

static ym_err parse_bytelevel_pre(ym_tok_t *t, const json_t *v, const char *where, ym_diag *diag)
{
    bool prefix = false, use_regex = false;
    ym_err err;
    /* HF's ByteLevel defaults: add_prefix_space and use_regex both true. */
    if ((err = get_bool(v, "add_prefix_space", true, &prefix, where, diag)) != YM_OK ||
        (err = get_bool(v, "use_regex", true, &use_regex, where, diag)) != YM_OK)
        return err;
    if (prefix && (err = add_pre(t, PRE_PREFIX_SPACE, where, diag)) != YM_OK)
        return err;
    if (use_regex && (err = add_pre(t, PRE_SPLIT_GPT2, where, diag)) != YM_OK)
        return err;
    return YM_OK;
}

static ym_err parse_split_pre(ym_tok_t *t, const json_t *v, const char *where, ym_diag *diag)
{
    const json_t *pat = json_object_get(v, "pattern");
    const json_t *re = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
    if (!json_is_string(re))
        return BAD("%s.pattern: want {\"Regex\": <the GPT-2 pattern>}", where);
    if (strcmp(json_string_value(re), GPT2_PATTERN) != 0)
        return BAD("%s.pattern: only the GPT-2 split regex is supported", where);
    const json_t *beh = json_object_get(v, "behavior");
    if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") != 0)
        return BAD("%s.behavior: only \"Isolated\" is supported", where);
    bool invert = false;
    ym_err err = get_bool(v, "invert", false, &invert, where, diag);
    if (err != YM_OK)
        return err;
    if (invert)
        return BAD("%s.invert: true is not supported", where);
    return add_pre(t, PRE_SPLIT_GPT2, where, diag);
}

/* ByteLevel, or Sequence[Split(GPT-2 regex, Isolated)..., ByteLevel] with ByteLevel last: the
 * byte-level mapping must come after every split, since the splits look at characters. */
static ym_err parse_pre(ym_tok_t *t, const json_t *v, ym_diag *diag)
{
    if (v == NULL || json_is_null(v))
        return BAD("pre_tokenizer: missing; a byte-level BPE needs ByteLevel");
    if (!json_is_object(v))
        return BAD("pre_tokenizer: not an object");
    const char *ty = type_of(v);
    if (ty == NULL)
        return BAD("pre_tokenizer.type: missing or not a string");
    if (strcmp(ty, "ByteLevel") == 0)
        return parse_bytelevel_pre(t, v, "pre_tokenizer", diag);
    if (strcmp(ty, "Sequence") != 0)
        return BAD("pre_tokenizer.type: \"%.64s\" not supported (ByteLevel, or Sequence of "
                   "Split and ByteLevel)",
                   ty);
    const json_t *list = json_object_get(v, "pretokenizers");
    if (!json_is_array(list))
        return BAD("pre_tokenizer.pretokenizers: not an array");
    size_t n = json_array_size(list);
    bool have_bl = false;
    for (size_t i = 0; i < n; i++) {
        char where[64];
        snprintf(where, sizeof(where), "pre_tokenizer.pretokenizers[%zu]", i);
        const json_t *p = json_array_get(list, i);
        const char *pty = json_is_object(p) ? type_of(p) : NULL;
        if (pty == NULL)
            return BAD("%s: not an object with a string type", where);
        ym_err err;
        if (strcmp(pty, "ByteLevel") == 0) {
            if (i + 1 != n)
                return BAD("%s: ByteLevel must be the last pre-tokenizer", where);
            err = parse_bytelevel_pre(t, p, where, diag);
            have_bl = true;
        } else if (strcmp(pty, "Split") == 0) {
            err = parse_split_pre(t, p, where, diag);
        } else {
            return BAD("%s.type: \"%.64s\" not supported (Split, ByteLevel)", where, pty);
        }
        if (err != YM_OK)
            return err;
    }
    if (!have_bl)
        return BAD("pre_tokenizer.pretokenizers: no ByteLevel step");
    return YM_OK;
}

static ym_err parse_decoder(const json_t *v, ym_diag *diag)
{
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (!json_is_object(v))
        return BAD("decoder: not an object");
    const char *ty = type_of(v);
    if (ty == NULL)
        return BAD("decoder.type: missing or not a string");
    if (strcmp(ty, "ByteLevel") != 0)
        return BAD("decoder.type: \"%.64s\" not supported (ByteLevel)", ty);
    return YM_OK;
}

/* Byte-level decoding of a vocab string as HF's ByteLevel decoder does it: the bytes its
 * characters stand for, or, if any character is outside the alphabet, the string itself. */
static ym_err vocab_bytes(const unsigned char *s, size_t n, const int16_t *cp_to_byte, buf *out)
{
    size_t start = out->len;
    size_t i = 0;
    while (i < n) {
        size_t k;
        int32_t c = utf8_cp(s, i, &k);
        if (c >= 324 || cp_to_byte[c] < 0) {
            out->len = start;
            return ym_buf_put(out, s, n);
        }
        unsigned char b = (unsigned char)cp_to_byte[c];
        ym_err err = ym_buf_put(out, &b, 1);
        if (err != YM_OK)
            return err;
        i += k;
    }
    return YM_OK;
}

/* model.vocab: names and ids, and each id's bytes. Ids are checked against the number of
 * entries so that a small file cannot ask for huge per-id tables. */
static ym_err parse_vocab(ym_tok_t *t, const json_t *vocab, const json_t *added,
                          const int16_t *cp_to_byte, ym_diag *diag)
{
    json_t *v = (json_t *)vocab; /* jansson's iterators take no const */
    size_t n_vocab = json_object_size(v), n_added = json_array_size(added);
    if (n_vocab > INT32_MAX / 4 || n_added > INT32_MAX / 4)
        return BAD("model.vocab: too large");
    int64_t id_limit = (int64_t)(n_vocab + n_added) + MAX_ID_SLACK;
    int64_t max_id = -1;
    size_t names_len = 0;
    for (void *it = json_object_iter(v); it != NULL; it = json_object_iter_next(v, it)) {
        const char *key = json_object_iter_key(it);
        const json_t *val = json_object_iter_value(it);
        if (!json_is_integer(val))
            return BAD("model.vocab[\"%.64s\"]: id not an integer", key);
        json_int_t id = json_integer_value(val);
        if (id < 0 || id >= id_limit)
            return BAD("model.vocab[\"%.64s\"]: id %lld out of range", key, (long long)id);
        max_id = id > max_id ? id : max_id;
        names_len += json_object_iter_key_len(it);
    }
    for (size_t i = 0; i < n_added; i++) {
        const json_t *a = json_array_get(added, i);
        const json_t *idv = json_is_object(a) ? json_object_get(a, "id") : NULL;
        if (!json_is_integer(idv))
            return BAD("added_tokens[%zu].id: missing or not an integer", i);
        json_int_t id = json_integer_value(idv);
        if (id < 0 || id >= id_limit)
            return BAD("added_tokens[%zu].id: %lld out of range", i, (long long)id);
        max_id = id > max_id ? id : max_id;
    }
    if (names_len > UINT32_MAX / 2)
        return BAD("model.vocab: too large");

    ym_err err;
    t->n_vocab = (int)(max_id + 1);
    if ((t->info = calloc((size_t)t->n_vocab + 1, sizeof(idinfo))) == NULL ||
        (t->names = malloc(names_len + 1)) == NULL)
        return YM_ENOMEM;
    for (int i = 0; i < t->n_vocab; i++)
        t->info[i].added = -1;
    if ((err = smap_init(&t->vocab, n_vocab)) != YM_OK)
        return err;
    size_t off = 0;
    for (void *it = json_object_iter(v); it != NULL; it = json_object_iter_next(v, it)) {
        const char *key = json_object_iter_key(it);
        size_t klen = json_object_iter_key_len(it);
        int32_t id = (int32_t)json_integer_value(json_object_iter_value(it));
        idinfo *in = &t->info[id];
        if (in->present)
            return BAD("model.vocab[\"%.64s\"]: id %d already used", key, (int)id);
        memcpy(t->names + off, key, klen);
        smap_put(&t->vocab, t->names, (uint32_t)off, (uint32_t)klen, id);
        off += klen;
        in->present = true;
        in->off = (uint32_t)t->bytes.len;
        if ((err = vocab_bytes((const unsigned char *)key, klen, cp_to_byte, &t->bytes)) != YM_OK)
            return err;
        in->len = (uint32_t)(t->bytes.len - in->off);
    }
    return YM_OK;
}

/* added_tokens: flags, contents, ids. A token's bytes are its content (see the note on top). */
static ym_err parse_added(ym_tok_t *t, const json_t *added, ym_diag *diag)
{
    size_t n_added = json_array_size(added);
    ym_err err;
    if (n_added > 0 && (t->added = calloc(n_added, sizeof(atok))) == NULL)
        return YM_ENOMEM;
    if ((err = smap_init(&t->added_names, n_added)) != YM_OK)
        return err;
    for (size_t i = 0; i < n_added; i++) {
        const json_t *a = json_array_get(added, i);
        const json_t *c = json_object_get(a, "content");
        char where[48];
        snprintf(where, sizeof(where), "added_tokens[%zu]", i);
        if (!json_is_string(c))
            return BAD("%s.content: missing or not a string", where);
        int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
        atok tk = {.id = id};
        /* HF's defaults: not special, and normalized unless special. */
        if ((err = get_bool(a, "special", false, &tk.special, where, diag)) != YM_OK ||
            (err = get_bool(a, "single_word", false, &tk.single_word, where, diag)) != YM_OK ||
            (err = get_bool(a, "lstrip", false, &tk.lstrip, where, diag)) != YM_OK ||
            (err = get_bool(a, "rstrip", false, &tk.rstrip, where, diag)) != YM_OK ||
            (err = get_bool(a, "normalized", !tk.special, &tk.normalized, where, diag)) != YM_OK)
            return err;
        const char *cs = json_string_value(c);
        size_t cn = json_string_length(c);
        if (cn == 0) /* HF skips empty added tokens */
            continue;
        if (cn > UINT32_MAX / 4 || t->apool.len > UINT32_MAX / 4)
            return BAD("%s.content: too long", where);
        int32_t vid = smap_get(&t->vocab, t->names, cs, cn);
        if (vid >= 0 && vid != id)
            return BAD("%s: id %d, but model.vocab gives \"%.64s\" id %d", where, (int)id, cs,
                       (int)vid);
        if (vid < 0 && t->info[id].present && t->info[id].added < 0)
            return BAD("%s: id %d already used by another token", where, (int)id);
        tk.off = (uint32_t)t->apool.len;
        tk.len = (uint32_t)cn;
        if ((err = ym_buf_put(&t->apool, cs, cn)) != YM_OK)
            return err;
        if (smap_put(&t->added_names, t->apool.p, tk.off, tk.len, id) != id)
            return BAD("%s.content: \"%.64s\" listed twice with different ids", where, cs);
        idinfo *in = &t->info[id];
        if (in->added >= 0) {
            const atok *prev = &t->added[in->added];
            if (prev->len != cn || memcmp(t->apool.p + prev->off, cs, cn) != 0)
                return BAD("%s: id %d already used by another added token", where, (int)id);
            t->apool.len -= cn; /* an exact repeat: keep the first */
            continue;
        }
        in->present = true;
        in->added = t->n_added;
        in->off = (uint32_t)t->bytes.len;
        in->len = (uint32_t)cn;
        if ((err = ym_buf_put(&t->bytes, cs, cn)) != YM_OK)
            return err;
        t->added[t->n_added++] = tk;
    }
    return YM_OK;
}

/* model.merges: "a b" strings (legacy; "#version" lines skipped, as HF does) or ["a", "b"]
 * pairs; rank is the position. Both parts and their concatenation must be in the vocab. */
static ym_err parse_merges(ym_tok_t *t, const json_t *merges, ym_diag *diag)
{
    size_t n = json_array_size(merges);
    if (n > INT32_MAX / 4)
        return BAD("model.merges: too large");
    uint32_t cap = pow2_at_least(n * 2 + 1);
    if ((t->merges.slot = malloc((size_t)cap * sizeof(mslot))) == NULL)
        return YM_ENOMEM;
    t->merges.mask = cap - 1;
    for (uint32_t i = 0; i < cap; i++)
        t->merges.slot[i].new_id = -1;
    buf cat = {0};
    uint32_t rank = 0;
    ym_err err = YM_OK;
    for (size_t i = 0; i < n && err == YM_OK; i++) {
        const json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t an, bn;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            size_t sn = json_string_length(m);
            if (sn >= 8 && memcmp(s, "#version", 8) == 0)
                continue;
            const char *sp = memchr(s, ' ', sn);
            if (sp == NULL || memchr(sp + 1, ' ', sn - (size_t)(sp + 1 - s)) != NULL) {
                err = BAD("model.merges[%zu]: \"%.64s\" is not two tokens split by a space", i, s);
                break;
            }
            a = s;
            an = (size_t)(sp - s);
            b = sp + 1;
            bn = sn - an - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            an = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bn = json_string_length(json_array_get(m, 1));
        } else {
            err = BAD("model.merges[%zu]: not a string nor a pair of strings", i);
            break;
        }
        int32_t ia = smap_get(&t->vocab, t->names, a, an);
        int32_t ib = smap_get(&t->vocab, t->names, b, bn);
        if (ia < 0 || ib < 0) {
            err = BAD("model.merges[%zu]: token \"%.64s\" not in model.vocab", i, ia < 0 ? a : b);
            break;
        }
        cat.len = 0;
        if ((err = ym_buf_put(&cat, a, an)) != YM_OK || (err = ym_buf_put(&cat, b, bn)) != YM_OK)
            break;
        int32_t inew = smap_get(&t->vocab, t->names, cat.p, cat.len);
        if (inew < 0) {
            err = BAD("model.merges[%zu]: merged token \"%.64s\" not in model.vocab", i, cat.p);
            break;
        }
        merge_put(&t->merges, ia, ib, rank++, inew);
    }
    free(cat.p);
    return err;
}

static ym_err parse_model(ym_tok_t *t, const json_t *model, const json_t *added,
                          const int16_t *cp_to_byte, ym_diag *diag)
{
    ym_err err;
    if (!json_is_object(model))
        return BAD("model: missing or not an object");
    const json_t *ty = json_object_get(model, "type");
    if (ty != NULL && !json_is_string(ty))
        return BAD("model.type: not a string");
    if (ty != NULL && strcmp(json_string_value(ty), "BPE") != 0)
        return BAD("model.type: \"%.64s\" not supported (BPE only)", json_string_value(ty));
    const json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return BAD("model.vocab: missing or not an object");
    const json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges))
        return BAD("model.merges: missing or not an array");
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout != NULL && !json_is_null(dropout) &&
        (!json_is_number(dropout) || json_number_value(dropout) != 0.0))
        return BAD("model.dropout: only null is supported");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, affixes[i]);
        if (v != NULL && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return BAD("model.%s: not supported", affixes[i]);
    }
    if ((err = get_bool(model, "byte_fallback", false, &t->byte_fallback, "model", diag)) !=
            YM_OK ||
        (err = get_bool(model, "fuse_unk", false, &t->fuse_unk, "model", diag)) != YM_OK ||
        (err = get_bool(model, "ignore_merges", false, &t->ignore_merges, "model", diag)) != YM_OK)
        return err;
    if ((err = parse_vocab(t, vocab, added, cp_to_byte, diag)) != YM_OK ||
        (err = parse_added(t, added, diag)) != YM_OK ||
        (err = parse_merges(t, merges, diag)) != YM_OK)
        return err;
    const json_t *unk = json_object_get(model, "unk_token");
    if (unk != NULL && !json_is_null(unk)) {
        if (!json_is_string(unk))
            return BAD("model.unk_token: not a string");
        t->unk_id = smap_get(&t->vocab, t->names, json_string_value(unk), json_string_length(unk));
        if (t->unk_id < 0)
            return BAD("model.unk_token: \"%.64s\" not in model.vocab", json_string_value(unk));
    }
    return YM_OK;
}

/* How each of the 256 bytes starts a word (see bpe_word). */
static void build_init(ym_tok_t *t)
{
    for (unsigned b = 0; b < 256; b++) {
        unsigned char ch[4];
        size_t cn = (size_t)utf8proc_encode_char((int32_t)byte_to_cp(b), ch);
        byteinit *bi = &t->init[b];
        int32_t id = smap_get(&t->vocab, t->names, ch, cn);
        if (id >= 0) {
            *bi = (byteinit){.kind = INIT_ID, .n = 1, .id = {id, -1}};
            continue;
        }
        if (t->byte_fallback) {
            bool all = true;
            for (size_t k = 0; k < cn; k++) {
                char name[8];
                snprintf(name, sizeof(name), "<0x%02X>", ch[k]);
                bi->id[k] = smap_get(&t->vocab, t->names, name, strlen(name));
                all = all && bi->id[k] >= 0;
            }
            if (all) {
                bi->kind = INIT_FALLBACK;
                bi->n = (uint8_t)cn;
                continue;
            }
        }
        bi->kind = t->unk_id >= 0 ? INIT_UNK : INIT_DROP;
    }
}

/* The normalized-token trie matches the contents as the normalizer leaves them. */
static ym_err build_tries(ym_tok_t *t)
{
    ym_err err;
    if ((err = trie_init(&t->trie_raw)) != YM_OK || (err = trie_init(&t->trie_norm)) != YM_OK)
        return err;
    enc e = {.tok = t};
    for (int i = 0; i < t->n_added && err == YM_OK; i++) {
        const atok *a = &t->added[i];
        const char *s = t->apool.p + a->off;
        if (!a->normalized) {
            err = trie_add(&t->trie_raw, (const unsigned char *)s, a->len, i);
            continue;
        }
        const char *ns;
        size_t nn;
        if ((err = normalize(&e, t, s, a->len, &ns, &nn)) == YM_OK)
            err = trie_add(&t->trie_norm, (const unsigned char *)ns, nn, i);
    }
    enc_deinit(&e);
    return err;
}

static ym_err build_raw_map(ym_tok_t *t)
{
    ym_err err = smap_init(&t->raw, (size_t)t->n_vocab);
    if (err != YM_OK)
        return err;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->info[id].present && t->info[id].added < 0)
            smap_put(&t->raw, t->bytes.p, t->info[id].off, t->info[id].len, id);
    return YM_OK;
}

ym_err ym_tok_parse(const char *json, size_t len, ym_tok_t **out, ym_diag *diag)
{
    *out = NULL;
    if (json == NULL && len > 0)
        return ym_diag_set(diag, YM_EINVAL, "tokenizer.json: no data");
    ym_tok_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return YM_ENOMEM;
    t->unk_id = -1;
    t->eos_id = -1;
    ym_err err;
    json_error_t jerr;
    json_t *root =
        json_loadb(json != NULL ? json : "", len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (root == NULL) {
        err = BAD("not valid JSON: %s at line %d column %d", jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        err = BAD("top level is not an object");
        goto fail;
    }
    const json_t *added = json_object_get(root, "added_tokens");
    if (added != NULL && !json_is_null(added) && !json_is_array(added)) {
        err = BAD("added_tokens: not an array");
        goto fail;
    }
    if ((err = parse_normalizer(t, json_object_get(root, "normalizer"), "normalizer", 0, diag)) !=
            YM_OK ||
        (err = parse_pre(t, json_object_get(root, "pre_tokenizer"), diag)) != YM_OK ||
        (err = parse_decoder(json_object_get(root, "decoder"), diag)) != YM_OK)
        goto fail;
    /* post_processor is not read: encode adds no BOS/EOS (see the note at the top). */

    int16_t cp_to_byte[324];
    for (int i = 0; i < 324; i++)
        cp_to_byte[i] = -1;
    for (unsigned b = 0; b < 256; b++)
        cp_to_byte[byte_to_cp(b)] = (int16_t)b;
    if ((err = parse_model(t, json_object_get(root, "model"), json_is_array(added) ? added : NULL,
                           cp_to_byte, diag)) != YM_OK)
        goto fail;
    build_init(t);
    if ((err = build_tries(t)) != YM_OK)
        goto fail;
    if (t->ignore_merges && (err = build_raw_map(t)) != YM_OK)
        goto fail;
    const char *eos_names[] = {"<|endoftext|>", "</s>", "<eos>"};
    for (int i = 0; i < 3 && t->eos_id < 0; i++)
        t->eos_id = ym_tok_id(t, eos_names[i]);
    json_decref(root);
    *out = t;
    return YM_OK;
fail:
    json_decref(root);
    ym_tok_free(t);
    return err;
}

ym_err ym_tok_load(const char *path, ym_tok_t **out, ym_diag *diag)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ym_diag_set(diag, errno == ENOENT ? YM_ENOENT : YM_EIO, "%s: %s", path,
                           strerror(errno));
    buf b = {0};
    char chunk[65536];
    size_t k;
    ym_err err = YM_OK;
    while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if ((err = ym_buf_put(&b, chunk, k)) != YM_OK)
            break;
    if (err == YM_OK && ferror(f))
        err = ym_diag_set(diag, YM_EIO, "%s: read error", path);
    fclose(f);
    if (err == YM_OK)
        err = ym_tok_parse(b.p, b.len, out, diag);
    free(b.p);
    return err;
}
