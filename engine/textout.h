/* engine/textout.h - incremental detokenization with stop strings, for streaming.
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

#endif
