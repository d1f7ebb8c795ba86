/* engine/tokenizer.c - Hugging Face tokenizer.json, byte-level BPE (GPT-NeoX / Mamba family).
 *
 * Owns: encoding text to ids and decoding ids to text with the ids Hugging Face tokenizers gives
 * (docs/ARCHITECTURE.md §3), over the immutable ym_tok_t that tokenizer_json.c loads from
 * tokenizer.json (the layout both share is tokenizer_impl.h).
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
#include "engine/tokenizer_impl.h"
#include "engine/tokenizer_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- token id lists ------------------------------------------------------------------ */

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

