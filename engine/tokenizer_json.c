/* engine/tokenizer_json.c - reading Hugging Face tokenizer.json into a ym_tok_t.
 *
 * Owns: parsing and validating the file (jansson): normalizer, pre-tokenizer, decoder, model
 * (BPE vocab and merges, unk, byte fallback, ignore_merges), added tokens; then the tables the
 * encoder reads (tokenizer_impl.h). Runs: any thread (a load touches only what it builds).
 * Must not: encode or decode (tokenizer.c does), or keep anything mutable in the result. */
#include "engine/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/buf.h"
#include "engine/tokenizer_impl.h"
#include "engine/tokenizer_int.h"
#include "engine/utf8.h"

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
        int32_t c = ym_utf8_decode(s + i, &k);
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

/* The normalized-token trie matches the contents as the normalizer leaves them (the encoder's
 * own normalizer, tokenizer_int.h). */
static ym_err build_tries(ym_tok_t *t)
{
    ym_err err;
    if ((err = trie_init(&t->trie_raw)) != YM_OK || (err = trie_init(&t->trie_norm)) != YM_OK)
        return err;
    for (int i = 0; i < t->n_added && err == YM_OK; i++) {
        const atok *a = &t->added[i];
        const char *s = t->apool.p + a->off;
        if (!a->normalized) {
            err = trie_add(&t->trie_raw, (const unsigned char *)s, a->len, i);
            continue;
        }
        char *ns = NULL;
        size_t nn;
        if ((err = ym__tok_normalize(t, s, a->len, &ns, &nn)) == YM_OK)
            err = trie_add(&t->trie_norm, (const unsigned char *)ns, nn, i);
        free(ns);
    }
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
