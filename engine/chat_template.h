/* engine/chat_template.h - a model's chat template: found in its directory, parsed once, and
 * applied to a conversation to make the prompt.
 *
 * Hugging Face keeps the template in tokenizer_config.json ("chat_template": a string, or a
 * list of {"name", "template"} of which "default" is used) or in chat_template.jinja (which
 * wins when both exist), and the bos/eos token strings in tokenizer_config.json. The template
 * is rendered as transformers renders it (engine/jinja.h): with messages, add_generation_prompt,
 * bos_token and eos_token (when known), and tools and documents as None. A loaded template is
 * immutable: any thread may apply it, several at once. */
#ifndef YM_ENGINE_CHAT_TEMPLATE_H
#define YM_ENGINE_CHAT_TEMPLATE_H

#include <stddef.h>

#include <jansson.h>

#include "engine/err.h"
#include "engine/jinja.h"

typedef struct ym_chat_template ym_chat_template_t;

/* The chat template of the model directory dir. New template in *out (ym_chat_template_free).
 * YM_ENOENT when dir has no template (diag says so); YM_EFORMAT for a malformed
 * tokenizer_config.json or a template that does not parse (diag names the file, the line and
 * the construct); YM_EIO for a read error. On failure *out is NULL. */
ym_err ym_chat_template_load(const char *dir, ym_chat_template_t **out, ym_diag *diag);

/* A template from its source text (src[0..len), UTF-8) and the token strings (NULL: the
 * variable is left undefined; both copied). Errors as ym_jinja_parse. */
ym_err ym_chat_template_new(const char *src, size_t len, const char *bos_token,
                            const char *eos_token, ym_chat_template_t **out, ym_diag *diag);

/* Replace the bos or eos token string (NULL: undefined). YM_ENOMEM on allocation failure. */
ym_err ym_chat_template_set_bos(ym_chat_template_t *ct, const char *bos_token);
ym_err ym_chat_template_set_eos(ym_chat_template_t *ct, const char *eos_token);
/* The token strings; borrowed (valid while ct lives and its tokens are not replaced); NULL when
 * unknown. */
const char *ym_chat_template_bos(const ym_chat_template_t *ct);
const char *ym_chat_template_eos(const ym_chat_template_t *ct);

/* Render the prompt for messages (a JSON array of message objects, borrowed). On success *out is
 * a new NUL-terminated string (free) of *out_len bytes. Errors as ym_jinja_render: a
 * raise_exception() in the template is YM_EINVAL with diag->param YM_JINJA_RAISED and its
 * message in diag->msg. opts may be NULL. */
ym_err ym_chat_template_apply(const ym_chat_template_t *ct, const json_t *messages,
                              int add_generation_prompt, const ym_jinja_opts *opts, char **out,
                              size_t *out_len, ym_diag *diag);

void ym_chat_template_free(ym_chat_template_t *ct); /* NULL-safe */

#endif
