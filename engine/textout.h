/* engine/textout.h - one generated sequence's end rules and text: incremental detokenization
 * with stop strings, end-of-text and the length limit, shared by `yunmin generate` and the
 * server so their rules cannot drift.
 *
 * Tokens go in one at a time; text comes out as soon as it is certain: complete UTF-8 only
 * (a token may end inside a character), and never a part that could still become a stop
 * string. When a stop string appears, the text before it is emitted and the match is
 * reported; the stop string itself is not emitted (OpenAI's behaviour). Concatenating all
 * emitted pieces plus the final flush equals the HF decode of all tokens when no stop hits.
 * One sequence's; one thread at a time. */
#ifndef YM_ENGINE_TEXTOUT_H
#define YM_ENGINE_TEXTOUT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/tokenizer.h"

typedef struct ym_textout ym_textout_t;

/* tok is borrowed (must outlive the textout); stop strings are copied. Empty strings are
 * ignored. New object in *out (ym_textout_free). */
ym_err ym_textout_new(const ym_tok_t *tok, const char *const *stops, int n_stops,
                      ym_textout_t **out);
void ym_textout_free(ym_textout_t *to); /* NULL-safe */
/* Feed one token. *text and *len: the newly certain text (borrowed, valid until the next call;
 * may be empty). Returns 1 when a stop string matched (then stop feeding), else 0. */
int ym_textout_push(ym_textout_t *to, int32_t id, const char **text, size_t *len);
/* End of generation: everything held back (incomplete UTF-8 becomes U+FFFD, as HF decode
 * does). Borrowed, valid until the next call. */
void ym_textout_finish(ym_textout_t *to, const char **text, size_t *len);
/* The stop string that matched, or NULL. Borrowed. */
const char *ym_textout_stop(const ym_textout_t *to);

/* How a sequence goes on after a token. */
typedef enum {
    YM_SEQ_GOING,  /* sample the next token */
    YM_SEQ_EOS,    /* the token is end-of-text: it ends the sequence and adds no text */
    YM_SEQ_STOP,   /* a stop string matched: the text before it was emitted, not the stop */
    YM_SEQ_LENGTH, /* the token was the max_tokens-th */
} ym_seq_end;

/* The sequence's end rules: eos_id (-1 = none) unless ignore_eos, and at most max_tokens
 * generated tokens (< 0 = no limit). Defaults: no end-of-text, no limit. */
void ym_textout_set_rules(ym_textout_t *to, int32_t eos_id, int ignore_eos, int64_t max_tokens);
/* One generated token through the rules: counts it, detokenizes it, and says how the sequence
 * goes on. *text and *len: the text to emit now (borrowed, valid until the next call), which at
 * the end (EOS, LENGTH) includes everything held back. Feed no more tokens once it returned
 * anything but YM_SEQ_GOING. */
ym_seq_end ym_textout_step(ym_textout_t *to, int32_t id, const char **text, size_t *len);
int64_t ym_textout_n_tokens(const ym_textout_t *to); /* tokens fed to ym_textout_step */

#endif
