/* server/server.h - yunmind's process-wide object and the pieces the HTTP files share.
 *
 * One ym_server per process. The loop thread owns it (libuv handles, the MHD daemon, the
 * request list); the engine thread reaches only srv->sched and srv->metrics, which are
 * thread-safe. Internal to server/: the transport (httpd.c: MHD and libuv, bodies, suspension,
 * SSE framing), the route table (routes.c) and the handlers, one file per resource. */
#ifndef YM_SERVER_SERVER_H
#define YM_SERVER_SERVER_H
#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine/buf.h"
#include "engine/chat_template.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "server/conf.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/router.h"
#include "server/sched.h"
#include "server/registry.h"
#include "server/tenants.h"


typedef struct ym_server ym_server_t;

/* Where a request stands in its life: one value, not flags (docs/ARCHITECTURE.md §2, "A
 * request's phases"). It only moves down this list, except that a held answer MHD refuses at
 * the body's end goes back to WORK. */
typedef enum {
    YM_PHASE_HEADERS,      /* headers in, no body bytes expected now (none follows, the client
                            * waits for "100 Continue", or more than drain_max is announced):
                            * an answer goes out at once */
    YM_PHASE_BODY,         /* body bytes may still arrive: an answer now is held */
    YM_PHASE_WORK,         /* the body has ended: the handler runs, or its work off the loop */
    YM_PHASE_HELD,         /* answered before the body ended: the answer waits while the rest
                            * of the body is read and dropped */
    YM_PHASE_ANSWERED,     /* a whole response is queued */
    YM_PHASE_STREAMING,    /* an SSE response is queued: events flow */
    YM_PHASE_STREAM_DONE,  /* "[DONE]" is in r->sse: the stream ends after it */
    YM_PHASE_STREAM_ABORT, /* the stream ends abruptly, without [DONE] */
    YM_PHASE_CLOSED,       /* MHD's completed callback ran: the connection is gone */
} ym_phase;

/* One HTTP request, from MHD's first access callback to its completed callback. */
typedef struct ym_hreq {
    ym_server_t *srv;             /* borrowed */
    struct MHD_Connection *conn;  /* borrowed from MHD */
    char id[48];                  /* request id (logs, X-Request-Id, completion id) */
    const char *route;            /* metrics label (the route's pattern), static */
    ym_match match;               /* the route and its path parameters */
    int close_now;                /* the handler asked to close without an answer */
    void (*on_output)(struct ym_hreq *r); /* new output of r->gen (completions.c), or NULL */
    void (*on_ping)(struct ym_hreq *r);   /* a ': ping' for a stream still waiting, or NULL */
    double t_start;
    int status;                   /* status queued, 0 before */
    ym_buf body;                  /* request body */
    ym_err body_err;              /* YM_ETOOBIG (past body_limit) or YM_ENOMEM (could not be
                                   * stored): the body is refused; else YM_OK */
    uint64_t body_limit;          /* bytes: max_body_bytes, or max_upload_bytes (admin PUT) */
    size_t discarded;             /* body bytes dropped after an early answer */
    ym_phase phase;               /* where the request stands in its life */
    int expect_continue;          /* the client waits for "100 Continue" before its body */
    struct MHD_Response *held;    /* owned: the answer, queued once the body has been read */
    int held_status;
    uint64_t drain_max;           /* body bytes read and dropped at most to deliver it */
    const char *allow;            /* methods of the route (static), for Allow on 405/OPTIONS */

    /* Generation (POST /v1/completions and /v1/chat/completions). */
    ym_gen *gen;                  /* ref, or NULL */
    int chat;                     /* answer in the chat.completion forms (chat.c) */
    int include_usage, echo, logprobs, tokens_as_ids;
    struct ym_choice *choices;    /* owned [n_choices] (completions.c): each choice's output,
                                   * prompt p's n choices at p * n .. p * n + n - 1 */
    int n_choices;
    struct ym_prompt_out *prompts; /* owned [n_prompts] (completions.c): each prompt's echo */
    int n_prompts;
    int started;                  /* a choice has produced output */
    ym_buf sse;                   /* streaming: bytes formatted, not yet taken by MHD */
    size_t sse_pos;
    /* Facts beside the phase, each true in several phases: */
    int suspended;                /* MHD has the connection suspended (WORK while a job runs,
                                   * a stream with nothing to send) */
    int client_gone;              /* the sweep saw the peer hang up while suspended */
    ym_finish finish;
    int n_prompt, n_gen;
    double t_last_write;
    struct ym_hreq *prev, *next;  /* srv->gens list while a job, tokenization or upload runs */
    int tracked;                  /* in srv->gens */
    int refs;                     /* MHD's (until the completed callback) + a pending tokenization */
    char model[256];              /* the model id a completion answers as */
    int counted;                  /* holds one of the tenant's concurrent-request slots */
    int n_cached;                 /* prompt tokens resumed from the state cache */
    char *session_id;             /* owned: the completion's session, or NULL */
    int session_append;           /* the prompt continues the session's history */
    char identity[1200];          /* adapter names and versions of the completion */
    ym_tenant limits;             /* who asked ("" before authentication) and its limits as
                                   * they were then (0 = none) */
    struct ym_tok_job *tok_job;   /* tokenization running on the libuv pool, or NULL */
    struct ym_sess_job *sess_job; /* a session read running on the libuv pool (sessions.c),
                                   * or NULL */
    struct ym_upload *upload;     /* PUT /v1/adapters/{name} in progress, or NULL */
} ym_hreq;

struct ym_server {
    ym_conf conf;                 /* owned */
    char **argv;                  /* borrowed, for reloads */
    int argc;
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    uv_timer_t sweep_timer;
    uv_async_t ready_async;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_work_t load_work;
    int port;                     /* bound port */
    const ym_route *routes;       /* borrowed: the route table (routes.c) */
    size_t n_routes;

    ym_metrics_t *metrics;        /* owned */
    ym_model_t *model;            /* ref, NULL while loading */
    ym_tok_t *tok;                /* owned */
    ym_chat_template_t *chat_template; /* owned: parsed at load (or the chat_template setting),
                                        * NULL when the model has none that parses */
    ym_err chat_template_err;     /* why chat_template is NULL: YM_ENOENT none, else broken */
    ym_diag chat_template_diag;   /* and the detail, for the log (it names files) */
    ym_sched_t *sched;            /* owned */
    ym_scache_t *cache;           /* owned: sessions and prefix checkpoints (statecache.h) */
    unsigned char model_fp[32];   /* ym_model_fingerprint of the model (session export) */
    char model_name[256];
    char sparsity_path[4096];     /* the profile served, or "" (dense) */
    ym_err load_err;
    ym_diag load_diag;
    int64_t created;              /* unix time the model was loaded */

    int ready;                    /* model loaded and not draining */
    int draining;
    double drain_start;
    int exit_code;
    int stopping;
    ym_tenants_t *tenants;        /* owned; replaced on SIGHUP */
    struct ym_tenant_load {       /* requests in flight per tenant, kept across reloads */
        char name[YM_TENANT_NAME_MAX + 1];
        uint64_t n;
    } *load;
    int n_load, cap_load;
    ym_registry registry;         /* adapters of every tenant */
    uv_fs_event_t **watches;      /* owned [n_watches]: adapter_dir and each tenant dir */
    char (*watch_names)[YM_TENANT_NAME_MAX + 1];
    int n_watches, cap_watches;
    uv_timer_t rescan_timer;
    int rescan_running, rescan_again;
    ym_hreq *gens;                /* requests a drain waits for: generations, uploads */
    int n_gens;
    int n_http;                   /* requests between first callback and completion */
};

/* httpd.c: the transport. Handlers answer through these and nothing else of it. */
int ym_httpd_start(ym_server_t *srv, ym_diag *diag); /* MHD in the loop; 0 or -1 */
void ym_httpd_kick(ym_server_t *srv);                /* MHD_run + re-arm the timeout */
void ym_httpd_stop(ym_server_t *srv);
void ym_hreq_respond_json(ym_hreq *r, int status, json_t *body); /* takes body */
/* Answer with an error: status, OpenAI type and code from err.h's table (the only place that
 * maps them); param (NULL = none) and the formatted message go into the body. */
void ym_hreq_respond_error(ym_hreq *r, ym_err err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Answer with the error err and its detail (param, message; an empty message: err's own).
 * For work that ends after its handler returned; a handler returns the error instead. */
void ym_hreq_fail(ym_hreq *r, ym_err err, const ym_diag *diag);
void ym_hreq_respond_text(ym_hreq *r, int status, const char *type, char *text, size_t len);
/* Answer with static bytes (not copied, never freed: they must outlive the response) and
 * extra headers, name/value pairs ending in NULL (may be NULL). type NULL: no Content-Type
 * (a 304). */
void ym_hreq_respond_static(ym_hreq *r, int status, const char *type, const void *data,
                            size_t len, const char *const *headers);
/* Start streaming: queue the SSE response (reader pulls from r->sse). */
void ym_hreq_start_stream(ym_hreq *r);
void ym_hreq_stream_end(ym_hreq *r);   /* "[DONE]" is in r->sse: end the stream after it */
/* End the stream abruptly (out of memory, cancelled, stopping); before it started: at once
 * when it starts. */
void ym_hreq_stream_abort(ym_hreq *r);
const char *ym_hreq_header(ym_hreq *r, const char *name); /* borrowed, or NULL */
void ym_hreq_close(ym_hreq *r);   /* close the connection without an answer */
void ym_hreq_track(ym_hreq *r);   /* join srv->gens (idempotent) */
void ym_hreq_untrack(ym_hreq *r); /* leave it (idempotent) */
void ym_hreq_resume(ym_hreq *r);  /* resume the connection if suspended */
void ym_hreq_suspend(ym_hreq *r);
void ym_hreq_unref(ym_hreq *r);   /* frees on the last reference */
json_t *ym_json_text(const char *s, size_t len); /* string, invalid UTF-8 replaced */

/* An answer is queued or held (or the connection is gone): nothing more may be answered. */
static inline int ym_hreq_answered(const ym_hreq *r)
{
    return r->phase >= YM_PHASE_HELD;
}
static inline int ym_hreq_streaming(const ym_hreq *r) /* an SSE response is queued */
{
    return r->phase >= YM_PHASE_STREAMING && r->phase <= YM_PHASE_STREAM_ABORT;
}
static inline int ym_hreq_closed(const ym_hreq *r) /* the connection is gone */
{
    return r->phase == YM_PHASE_CLOSED;
}

/* Per-tenant concurrency (loop thread): take a slot (0, or -1 at the tenant's limit) / give
 * it back. */
int ym_tenant_acquire(ym_server_t *srv, ym_hreq *r, uint64_t limit);
void ym_tenant_release(ym_server_t *srv, ym_hreq *r);

/* routes.c: the table main.c hands to the transport. */
extern const ym_route ym_routes[];
extern const size_t ym_n_routes;

/* The handlers, one file per resource (routes.c lists their routes). Loop thread. Each returns
 * YM_OK when it answered (or its work will), else the error with diag (router.h). */
/* completions.c */
ym_err ym_completions_create(ym_hreq *r, const ym_match *m, ym_diag *diag);
/* What chat.c shares with it: the session of a request, the check of a token-id list against
 * the vocabulary, and the submission of the job with its ids (takes ids->v and adapter over).
 * Each returns YM_OK, or the error with diag (the caller answers it). */
ym_err ym__gen_take_session(ym_hreq *r, const ym_creq *q, ym_diag *diag);
ym_err ym__gen_check_vocab(ym_hreq *r, const ym_creq *q, ym_diag *diag);
struct ym_sc_entry;
/* session: session_append's entry, pinned (taken over), or NULL (ym__gen_session_entry). */
ym_err ym__gen_submit(ym_hreq *r, const ym_creq *q, ym_ids *ids, ym_adapter_t *adapter,
                      struct ym_sc_entry *session,
                      ym_diag *diag); /* ids: [q->n_prompts], one per prompt */
/* Tokenize q's text prompt (on the libuv pool when long) and submit. Takes over q's contents,
 * *root, adapter and text (the prompt's bytes when not in *root, or NULL). YM_OK when answered
 * or under way, else the error with diag. */
ym_err ym__gen_tokenize_submit(ym_hreq *r, ym_creq *q, json_t **root, ym_adapter_t *adapter,
                               char *text, ym_diag *diag);
/* The output of one choice, as the loop gathers it. */
typedef struct ym_choice {
    ym_gen_delta delta;
    ym_buf text;                  /* non-streaming: all text so far */
    ym_gen_tok *toks;             /* non-streaming with logprobs: all tokens */
    ym_logprob *tops;
    int n_all, cap_all;
    ym_finish finish;             /* YM_FINISH_NONE while it runs */
    int took;                     /* on_output took new output of it this time */
} ym_choice;
/* What a completion echoes of one of its prompts (echo), and with logprobs its scores. */
typedef struct ym_prompt_out {
    char *echo;                   /* owned: the prompt's text */
    size_t echo_len;
    const ym_gen_tok *toks;       /* borrowed from the prompt's job once scored, else NULL */
    const ym_logprob *tops;       /* [n_toks * n_top], borrowed likewise */
    int n_toks, n_top;
    size_t *offsets;              /* owned [n_toks]: where each token's text starts in echo */
    int sent;                     /* streaming: its echo chunks went out */
} ym_prompt_out;
void ym__gen_choices_free(ym_hreq *r);
/* chat.c */
ym_err ym_chat_create(ym_hreq *r, const ym_match *m, ym_diag *diag);
/* The chat forms of the output, for completions.c's output paths (new references). delta:
 * a delta object for a chunk (NULL: a choice-less chunk); message text for a whole answer. */
json_t *ym__chat_chunk(ym_hreq *r, int index, json_t *delta, json_t *logprobs,
                       const char *finish);
/* A chat.completion without choices; ym__chat_choice makes each of them. */
json_t *ym__chat_completion(ym_hreq *r, json_t *choices);
json_t *ym__chat_choice(int index, json_t *text, json_t *logprobs, const char *finish);
json_t *ym__chat_logprobs(ym_hreq *r, const ym_gen_tok *toks, const ym_logprob *tops, int n,
                          int n_top);
/* models.c */
ym_err ym_models_get(ym_hreq *r, const ym_match *m, ym_diag *diag); /* the list, or {id} */
/* The model a request names (NULL: the served one) exists: YM_OK, or YM_ENOMODEL. */
ym_err ym_models_check(const ym_server_t *srv, const char *model, ym_diag *diag);
/* tokens.c */
ym_err ym_tokens_encode(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_tokens_decode(ym_hreq *r, const ym_match *m, ym_diag *diag);
/* probes.c */
/* www.c: the web playground's files (GET / and /playground/{file}; 404 when turned off). */
ym_err ym_www_get(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_probes_healthz(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_probes_readyz(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_probes_metrics(ym_hreq *r, const ym_match *m, ym_diag *diag);
/* The server takes work: YM_OK, or YM_ELOADING / YM_EDRAINING (counted as rejected). */
ym_err ym_server_ready(ym_server_t *srv, ym_diag *diag);
/* adapters.c */
ym_err ym_adapters_list(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_adapters_get(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_adapters_delete(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_adapters_put_begin(ym_hreq *r, const ym_match *m, ym_diag *diag);
void ym_adapters_put_data(ym_hreq *r, const char *data, size_t len);
/* The body is complete: validate it off the loop, answer then. */
ym_err ym_adapters_put(ym_hreq *r, const ym_match *m, ym_diag *diag);
void ym_adapters_put_abort(ym_hreq *r);                    /* the connection ended first */
/* The adapter a completion asks for: model (an adapter name, or NULL/base) plus the adapters
 * list, composed. New reference in *out (NULL = base model); YM_OK, or the error with diag
 * (the caller answers it). Also puts the identity of what it picked (names and versions) into
 * r->identity, for the state cache. */
ym_err ym_adapters_resolve(ym_hreq *r, const char *model, json_t *list, ym_adapter_t **out,
                           ym_diag *diag);
json_t *ym_adapters_models(ym_hreq *r); /* the tenant's adapters as /v1/models entries */
/* Start-up and replicas sharing the volume: load what the store holds / watch it. */
void ym_adapters_start(ym_server_t *srv);
void ym_adapters_stop(ym_server_t *srv);
void ym_adapters_rescan(ym_server_t *srv); /* SIGHUP */
/* sessions.c */
ym_err ym_sessions_get(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_sessions_delete(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_sessions_export(ym_hreq *r, const ym_match *m, ym_diag *diag);
ym_err ym_sessions_import(ym_hreq *r, const ym_match *m, ym_diag *diag);
size_t ym_server_state_bytes(const ym_server_t *srv); /* one cached state of this model */
/* session_append: check r's session (exists, same tenant and adapters), put its pending
 * token before ids and fill p's append fields. e: the session's entry, pinned by the caller
 * (taken over), or NULL when it has none. YM_OK, or the error with diag (the caller answers
 * it). */
typedef struct ym_sc_entry ym_sc_entry;
ym_err ym_sessions_append(ym_hreq *r, ym_sc_entry *e, ym_ids *ids, ym_gen_params *p,
                          ym_diag *diag);

#endif
