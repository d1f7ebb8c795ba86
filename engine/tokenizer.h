/* engine/tokenizer.h - Hugging Face tokenizer.json, byte-level BPE (GPT-NeoX / Mamba family).
 *
 * Output equals Hugging Face tokenizers' ids for any input (docs/ARCHITECTURE.md §3): normalizer
 * (NFC and the other simple normalizers tokenizer.json may name), added/special tokens split out
 * first (leftmost-longest), ByteLevel pre-tokenizer (with its split regex, add_prefix_space),
 * merges by rank (either "a b" strings or ["a", "b"] pairs), ByteLevel decoder.
 * A loaded tokenizer is immutable: any thread may use it concurrently. */
#ifndef YM_ENGINE_TOKENIZER_H
#define YM_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct ym_tok ym_tok_t;

/* A growable id array. Storage is owned by the struct; release with ym_ids_deinit(). */
typedef struct ym_ids {
    int32_t *v;
    size_t n;
    size_t cap;
} ym_ids;
ym_err ym_ids_push(ym_ids *ids, int32_t id);
void ym_ids_deinit(ym_ids *ids); /* NULL-safe; leaves {0} */

/* Load from a tokenizer.json file, or parse from bytes. New reference in *out (ym_tok_free).
 * Malformed input -> YM_EFORMAT with a message naming the offending field. */
ym_err ym_tok_load(const char *path, ym_tok_t **out, ym_diag *diag);
ym_err ym_tok_parse(const char *json, size_t len, ym_tok_t **out, ym_diag *diag);
void ym_tok_free(ym_tok_t *tok); /* NULL-safe */

/* Encode UTF-8 text (need not be NUL-terminated; invalid UTF-8 is handled as HF does when it
 * reads the bytes lossily: each invalid byte becomes U+FFFD). Appends to *ids. No BOS/EOS is
 * added (HF's add_special_tokens=False; for GPT-NeoX the same ids as True). */
ym_err ym_tok_encode(const ym_tok_t *tok, const char *text, size_t len, ym_ids *ids);

/* Decode ids to UTF-8 text as HF's decode(skip_special_tokens=False) does. *text is a new
 * malloc'd NUL-terminated string (caller frees); *len its length. Unknown id -> YM_EINVAL. */
ym_err ym_tok_decode(const ym_tok_t *tok, const int32_t *ids, size_t n, char **text, size_t *len);

/* The raw bytes one token stands for (after the byte-level decoder), for streaming output.
 * Borrowed, valid while tok lives; NULL for an id out of range. Bytes may be partial UTF-8. */
const char *ym_tok_token_bytes(const ym_tok_t *tok, int32_t id, size_t *len);

/* Number of ids (max id + 1, added tokens included). */
int ym_tok_n_vocab(const ym_tok_t *tok);
/* Id of a token string (vocab or added), or -1. */
int32_t ym_tok_id(const ym_tok_t *tok, const char *token);
/* Whether id is an added token marked special (e.g. <|endoftext|>). */
int ym_tok_is_special(const ym_tok_t *tok, int32_t id);
/* End-of-text id: "<|endoftext|>" or "</s>" or "<eos>" if present, else -1. */
int32_t ym_tok_eos_id(const ym_tok_t *tok);

#endif
