/* engine/jinja.h - a Jinja2 interpreter for chat templates.
 *
 * Covers the part of Jinja2 that Hugging Face chat templates use, set up the way transformers
 * sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loop controls, its
 * tojson / raise_exception / strftime_now), and renders byte for byte what Jinja2 renders
 * (docs/CHAT.md lists what is covered). A template is parsed once into a ym_jinja_t, which is
 * immutable afterwards: any thread may render it, several at once. No I/O, no globals. */
#ifndef YM_ENGINE_JINJA_H
#define YM_ENGINE_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "engine/err.h"

typedef struct ym_jinja ym_jinja_t;

/* Parse src[0..len) (UTF-8). On success *out is a new template (ym_jinja_free). On failure
 * returns YM_EINVAL with diag->msg "line N: <what>" naming the construct (an unknown tag, filter
 * or test, an unclosed block, a syntax error), *out NULL. */
ym_err ym_jinja_parse(const char *src, size_t len, ym_jinja_t **out, ym_diag *diag);
void ym_jinja_free(ym_jinja_t *t); /* NULL-safe */

/* Render options; zero-initialised means the defaults. */
typedef struct ym_jinja_opts {
    int64_t now;           /* strftime_now's clock, seconds since the epoch in UTC; 0: the
                              current local time (as transformers' datetime.now()) */
    size_t max_output;     /* bytes of output; 0: 16 MiB */
    size_t max_memory;     /* bytes of working memory per render; 0: 256 MiB */
    uint64_t max_steps;    /* evaluation steps (loops, calls); 0: 50 million */
} ym_jinja_opts;

/* What a failed render means. */
#define YM_JINJA_RAISED "raise_exception" /* diag->param when the template raised */

/* Render t with the members of vars (a JSON object, borrowed) as the template's variables.
 * opts may be NULL. On success *out is a new NUL-terminated string (free; it may hold NUL
 * bytes: *out_len is its length). A raise_exception(msg) in the template returns YM_EINVAL
 * with diag->msg = msg exactly and diag->param = YM_JINJA_RAISED; any other error (undefined
 * value used, type error, limits) returns YM_EINVAL ("line N: <what>", param "template") or
 * YM_ENOMEM. Thread-safe for a shared t. */
ym_err ym_jinja_render(const ym_jinja_t *t, const json_t *vars, const ym_jinja_opts *opts,
                       char **out, size_t *out_len, ym_diag *diag);

#endif
