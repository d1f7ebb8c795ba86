/* engine/textout.c - incremental detokenization with stop strings, for streaming.
 *
 * One sequence's, used by one thread at a time (the engine thread, or the CLI's). Each token's
 * bytes (ym_tok_token_bytes) go through two holding stages before they are emitted:
 *   raw:  bytes that may still become a UTF-8 character (at most 3: a valid but incomplete
 *         sequence at the end). Everything before is converted as Rust's String::from_utf8_lossy
 *         does (HF decode): each maximal invalid subpart becomes U+FFFD, so the streamed text
 *         equals the decode of all tokens.
 *   hold: converted text that could be the start of a stop string (the longest suffix that
 *         is a proper prefix of one), or nothing.
 * Buffers grow to the longest piece seen and are then reused; no allocation in steady state. */
#include "engine/textout.h"

#include "engine/buf.h"
#include "engine/utf8.h"

#include <stdlib.h>
#include <string.h>

/* The tree's growable buffer (engine/buf.h). */
typedef ym_buf buf;

struct ym_textout {
    const ym_tok_t *tok; /* borrowed */
    char **stops;        /* owned, [n_stops], non-empty strings */
    size_t *stop_len;    /* owned, [n_stops] */
    int n_stops;
    int stopped;
    const char *match; /* borrowed from stops, or NULL */
    buf raw;  /* owned; an unfinished UTF-8 sequence, at most 3 bytes between calls */
    buf hold; /* owned */
    buf out;  /* owned; what the last call returned */
    int32_t eos_id;     /* -1: none */
    int64_t max_tokens; /* < 0: no limit */
    int64_t n_tokens;   /* fed to ym_textout_step */
};

/* Appends; on allocation failure the bytes are dropped (the stream loses text, never memory
 * safety; a process out of memory has bigger problems). */
static void buf_put(buf *b, const void *s, size_t n)
{
    if (n > 0)
        (void)ym_buf_put(b, s, n);
}

ym_err ym_textout_new(const ym_tok_t *tok, const char *const *stops, int n_stops,
                      ym_textout_t **out)
{
    ym_textout_t *to;
    *out = NULL;
    if (tok == NULL || n_stops < 0 || (n_stops > 0 && stops == NULL))
        return YM_EINVAL;
    if ((to = calloc(1, sizeof(*to))) == NULL)
        return YM_ENOMEM;
    to->tok = tok;
    to->eos_id = -1;
    to->max_tokens = -1;
    if (n_stops > 0) {
        to->stops = calloc((size_t)n_stops, sizeof(*to->stops));
        to->stop_len = calloc((size_t)n_stops, sizeof(*to->stop_len));
        if (to->stops == NULL || to->stop_len == NULL)
            goto fail;
        for (int i = 0; i < n_stops; i++) {
            if (stops[i] == NULL || stops[i][0] == '\0')
                continue; /* empty stop strings are ignored */
            if ((to->stops[to->n_stops] = strdup(stops[i])) == NULL)
                goto fail;
            to->stop_len[to->n_stops] = strlen(stops[i]);
            to->n_stops++;
        }
    }
    *out = to;
    return YM_OK;
fail:
    ym_textout_free(to);
    return YM_ENOMEM;
}

void ym_textout_free(ym_textout_t *to)
{
    if (to == NULL)
        return;
    for (int i = 0; i < to->n_stops; i++)
        free(to->stops[i]);
    free(to->stops);
    free(to->stop_len);
    ym_buf_deinit(&to->raw);
    ym_buf_deinit(&to->hold);
    ym_buf_deinit(&to->out);
    free(to);
}

const char *ym_textout_stop(const ym_textout_t *to)
{
    return to->match;
}

/* ---- UTF-8 ----------------------------------------------------------------------------- */

/* Convert s[0, n) into dst (engine/utf8.h); returns how many bytes at the end were left
 * unconverted (a valid unfinished sequence), unless at_end, when that tail becomes one U+FFFD
 * too. Memory failures drop text, as buf_put does. */
static size_t utf8_lossy(buf *dst, const unsigned char *s, size_t n, int at_end)
{
    ym_err err;
    return ym_utf8_lossy(dst, s, n, at_end != 0, &err);
}

/* ---- stop strings ---------------------------------------------------------------------- */

/* The earliest complete stop in hold (ties: the stop listed first): its index and position. */
static int find_stop(const ym_textout_t *to, size_t *pos)
{
    int best = -1;
    size_t best_pos = 0;
    *pos = 0;
    if (to->hold.len == 0)
        return -1;
    for (int k = 0; k < to->n_stops; k++) {
        const char *p = memmem(to->hold.p, to->hold.len, to->stops[k], to->stop_len[k]);
        if (p != NULL && (best < 0 || (size_t)(p - to->hold.p) < best_pos)) {
            best = k;
            best_pos = (size_t)(p - to->hold.p);
        }
    }
    *pos = best_pos;
    return best;
}

/* Length of the longest suffix of hold that is a proper prefix of some stop string. */
static size_t partial_stop(const ym_textout_t *to)
{
    size_t keep = 0;
    for (int k = 0; k < to->n_stops; k++) {
        size_t m = to->stop_len[k] - 1;
        if (m > to->hold.len)
            m = to->hold.len;
        for (; m > keep; m--) {
            if (memcmp(to->hold.p + to->hold.len - m, to->stops[k], m) == 0) {
                keep = m;
                break;
            }
        }
    }
    return keep;
}

/* Move the certain part of hold to out (all of it when at_end). Returns 1 on a stop. */
static int release(ym_textout_t *to, int at_end)
{
    size_t pos;
    int k = find_stop(to, &pos);
    if (k >= 0) {
        buf_put(&to->out, to->hold.p, pos);
        to->hold.len = 0;
        to->stopped = 1;
        to->match = to->stops[k];
        return 1;
    }
    size_t keep = at_end ? 0 : partial_stop(to);
    size_t emit = to->hold.len - keep;
    buf_put(&to->out, to->hold.p, emit);
    ym_buf_drop_front(&to->hold, emit);
    return 0;
}

int ym_textout_push(ym_textout_t *to, int32_t id, const char **text, size_t *len)
{
    to->out.len = 0;
    if (to->stopped) {
        *text = "";
        *len = 0;
        return 1;
    }
    size_t n;
    const char *bytes = ym_tok_token_bytes(to->tok, id, &n);
    if (bytes == NULL)
        n = 0; /* an id outside the vocabulary stands for no text */

    /* The unfinished character (if any) and the token's bytes, converted together. */
    buf_put(&to->raw, bytes, n);
    size_t left = utf8_lossy(&to->hold, (const unsigned char *)to->raw.p, to->raw.len, 0);
    ym_buf_drop_front(&to->raw, to->raw.len - left);

    int stop = release(to, 0);
    *text = to->out.len > 0 ? to->out.p : "";
    *len = to->out.len;
    return stop;
}

void ym_textout_finish(ym_textout_t *to, const char **text, size_t *len)
{
    to->out.len = 0;
    if (!to->stopped) {
        utf8_lossy(&to->hold, (const unsigned char *)to->raw.p, to->raw.len, 1);
        to->raw.len = 0;
        release(to, 1);
    }
    *text = to->out.len > 0 ? to->out.p : "";
    *len = to->out.len;
}

void ym_textout_set_rules(ym_textout_t *to, int32_t eos_id, int ignore_eos, int64_t max_tokens)
{
    to->eos_id = ignore_eos ? -1 : eos_id;
    to->max_tokens = max_tokens;
}

int64_t ym_textout_n_tokens(const ym_textout_t *to)
{
    return to->n_tokens;
}

ym_seq_end ym_textout_step(ym_textout_t *to, int32_t id, const char **text, size_t *len)
{
    to->n_tokens++;
    ym_seq_end end = YM_SEQ_GOING;
    if (to->eos_id >= 0 && id == to->eos_id) {
        /* End-of-text adds no text of its own: only what was held back comes out. */
        to->out.len = 0;
        end = YM_SEQ_EOS;
    } else if (ym_textout_push(to, id, text, len)) {
        return YM_SEQ_STOP; /* the text before the stop is in out; the rest is dropped */
    } else if (to->max_tokens >= 0 && to->n_tokens >= to->max_tokens) {
        end = YM_SEQ_LENGTH;
    }
    if (end != YM_SEQ_GOING && !to->stopped) {
        /* The end: release what the detokenizer held back, after this token's text. */
        utf8_lossy(&to->hold, (const unsigned char *)to->raw.p, to->raw.len, 1);
        to->raw.len = 0;
        release(to, 1);
    }
    *text = to->out.len > 0 ? to->out.p : "";
    *len = to->out.len;
    return end;
}
