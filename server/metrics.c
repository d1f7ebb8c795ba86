/* server/metrics.c - the numbers behind /metrics.
 *
 * One mutex guards everything: recording is a handful of additions, far below the cost of the
 * engine step that produces it, and rendering (a scrape every few seconds) copies under it.
 * Request counts are kept per (route, status) in a small open list; routes are fixed labels,
 * so the list stays bounded. */
#include "server/metrics.h"

#include "engine/buf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 20
#define MAX_REQ_KEYS 128

typedef struct hist_def {
    const char *name;
    const char *help;
    int n;
    double le[MAX_BUCKETS];
} hist_def;

static const hist_def hdefs[YM_M_N_HISTS] = {
    [YM_H_TTFT] = {"yunmin_time_to_first_token_seconds",
                   "Time from request arrival to its first generated token.", 16,
                   {0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
                    30}},
    [YM_H_ITL] = {"yunmin_inter_token_latency_seconds",
                  "Time between two consecutive tokens of one sequence.", 15,
                  {0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2,
                   0.5, 1, 2.5}},
    [YM_H_E2E] = {"yunmin_request_duration_seconds",
                  "Time from request arrival to its last generated token.", 12,
                  {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}},
    [YM_H_STEP] = {"yunmin_engine_step_seconds", "Wall time of one engine step (one forward).",
                   14,
                   {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
                    0.5, 1}},
    [YM_H_BATCH_ROWS] = {"yunmin_batch_rows", "Rows (tokens) per engine step.", 11,
                         {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}},
    [YM_H_BATCH_SEQS] = {"yunmin_batch_sequences", "Sequences per engine step.", 9,
                         {1, 2, 4, 8, 16, 32, 64, 128, 256}},
    [YM_H_DISK_WRITE] = {"yunmin_state_disk_write_seconds",
                         "Time to write one state file to state_dir (format, write, rename).", 12,
                         {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                          2.5}},
    [YM_H_STORE_WRITE] = {"yunmin_state_store_write_seconds",
                          "Time to write one state to the shared store (format, SET).", 12,
                          {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                           2.5}},
};

static const struct {
    const char *name, *help;
} cdefs[YM_M_N_COUNTERS] = {
    [YM_M_PROMPT_TOKENS] = {"yunmin_prompt_tokens_total", "Prompt tokens of admitted requests."},
    [YM_M_GEN_TOKENS] = {"yunmin_generation_tokens_total", "Generated tokens."},
    [YM_M_PREFILL_TOKENS] = {"yunmin_prefill_tokens_total", "Prompt tokens run through the model."},
    [YM_M_CANCELLED] = {"yunmin_requests_cancelled_total",
                        "Requests cancelled before they finished (client gone, drain timeout)."},
    [YM_M_REJECTED_BUSY] = {"yunmin_requests_rejected_busy_total",
                            "Requests refused with 503 because the queue was full or draining."},
    [YM_M_STEPS] = {"yunmin_engine_steps_total", "Engine steps run."},
    [YM_M_CACHE_SESSION_HITS] = {"yunmin_cache_session_hits_total",
                                 "Requests resumed from their session's stored state."},
    [YM_M_CACHE_PREFIX_HITS] = {"yunmin_cache_prefix_hits_total",
                                "Requests resumed from a prefix checkpoint."},
    [YM_M_CACHE_MISSES] = {"yunmin_cache_misses_total",
                           "Requests that found no cached state to resume from."},
    [YM_M_CACHE_SAVED_TOKENS] = {"yunmin_cache_saved_tokens_total",
                                 "Prompt tokens not run because a cached state covered them."},
    [YM_M_CACHE_STORES] = {"yunmin_cache_stores_total",
                           "States stored in the cache (sessions and prefix checkpoints)."},
    [YM_M_CACHE_EVICTIONS] = {"yunmin_cache_evictions_total",
                              "Cached states evicted (least recently used) to stay in budget."},
    [YM_M_BODY_TOO_LARGE] = {"yunmin_requests_body_too_large_total",
                             "Request bodies refused with 413 (over max_body_bytes)."},
    [YM_M_DISK_HITS] = {"yunmin_state_disk_hits_total",
                        "States read from the disk tier (state_dir) after a RAM miss."},
    [YM_M_DISK_MISSES] = {"yunmin_state_disk_misses_total",
                          "RAM misses the disk tier had no state file for."},
    [YM_M_DISK_WRITES] = {"yunmin_state_disk_writes_total", "State files written to state_dir."},
    [YM_M_DISK_ERRORS] = {"yunmin_state_disk_errors_total",
                          "State file reads or writes that failed (i/o); the request ran on."},
    [YM_M_DISK_REFUSED] = {"yunmin_state_disk_refused_total",
                           "State files refused (MAC, checksum or model mismatch) and deleted."},
    [YM_M_DISK_EVICTIONS] = {"yunmin_state_disk_evictions_total",
                             "State files removed to stay within state_dir_bytes."},
    [YM_M_STORE_HITS] = {"yunmin_state_store_hits_total",
                         "States read from the shared store (session_store) after RAM and disk "
                         "missed."},
    [YM_M_STORE_MISSES] = {"yunmin_state_store_misses_total",
                           "Store lookups that found no entry, or skipped it while it was down."},
    [YM_M_STORE_WRITES] = {"yunmin_state_store_writes_total", "States written to the store."},
    [YM_M_STORE_ERRORS] = {"yunmin_state_store_errors_total",
                           "Store connections or commands that failed; requests ran on."},
    [YM_M_STORE_REFUSED] = {"yunmin_state_store_refused_total",
                            "Store entries refused (MAC, checksum or model mismatch) and deleted."},
}, gdefs[YM_M_N_GAUGES] = {
    [YM_G_QUEUE] = {"yunmin_queue_depth", "Requests waiting for a running slot."},
    [YM_G_RUNNING] = {"yunmin_running_sequences", "Sequences in the running batch."},
    [YM_G_CONNECTIONS] = {"yunmin_http_requests_in_flight", "HTTP requests being served."},
    [YM_G_READY] = {"yunmin_ready", "1 when the server accepts work (model loaded, not draining)."},
    [YM_G_CACHE_BYTES] = {"yunmin_cache_bytes", "Bytes held by the state cache."},
    [YM_G_CACHE_BUDGET] = {"yunmin_cache_budget_bytes", "The state cache's byte budget."},
    [YM_G_CACHE_SESSIONS] = {"yunmin_cache_sessions", "Sessions held in the state cache."},
    [YM_G_CACHE_PREFIXES] = {"yunmin_cache_prefixes", "Prefix checkpoints held in the state cache."},
    [YM_G_DISK_BYTES] = {"yunmin_state_disk_bytes", "Bytes of state files in state_dir."},
    [YM_G_DISK_BUDGET] = {"yunmin_state_disk_budget_bytes", "state_dir_bytes (0 = no limit)."},
    [YM_G_DISK_FILES] = {"yunmin_state_disk_files", "State files in state_dir."},
};

typedef struct hist {
    uint64_t bucket[MAX_BUCKETS]; /* non-cumulative; +Inf is count - sum(bucket) */
    uint64_t count;
    double sum;
} hist;

typedef struct req_key {
    char route[48];
    int status;
    uint64_t n;
} req_key;

typedef struct nums {
    uint64_t counter[YM_M_N_COUNTERS];
    int64_t gauge[YM_M_N_GAUGES];
    hist h[YM_M_N_HISTS];
    req_key req[MAX_REQ_KEYS];
    int n_req;
} nums;

struct ym_metrics {
    pthread_mutex_t lock;
    nums v; /* guarded by lock */
};

ym_metrics_t *ym_metrics_new(void)
{
    ym_metrics_t *m = calloc(1, sizeof(*m));
    if (m != NULL)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void ym_metrics_free(ym_metrics_t *m)
{
    if (m == NULL)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void ym_metrics_add(ym_metrics_t *m, ym_counter c, uint64_t v)
{
    pthread_mutex_lock(&m->lock);
    m->v.counter[c] += v;
    pthread_mutex_unlock(&m->lock);
}

void ym_metrics_set(ym_metrics_t *m, ym_gauge g, int64_t v)
{
    pthread_mutex_lock(&m->lock);
    m->v.gauge[g] = v;
    pthread_mutex_unlock(&m->lock);
}

void ym_metrics_observe(ym_metrics_t *m, ym_hist h, double v)
{
    const hist_def *d = &hdefs[h];
    int b = 0;
    while (b < d->n && v > d->le[b])
        b++;
    pthread_mutex_lock(&m->lock);
    if (b < d->n)
        m->v.h[h].bucket[b]++;
    m->v.h[h].count++;
    m->v.h[h].sum += v;
    pthread_mutex_unlock(&m->lock);
}

void ym_metrics_request(ym_metrics_t *m, const char *route, int status)
{
    pthread_mutex_lock(&m->lock);
    int i;
    for (i = 0; i < m->v.n_req; i++)
        if (m->v.req[i].status == status && strcmp(m->v.req[i].route, route) == 0)
            break;
    if (i == m->v.n_req && m->v.n_req < MAX_REQ_KEYS) {
        snprintf(m->v.req[i].route, sizeof(m->v.req[i].route), "%s", route);
        m->v.req[i].status = status;
        m->v.n_req++;
    }
    if (i < m->v.n_req)
        m->v.req[i].n++;
    pthread_mutex_unlock(&m->lock);
}

/* The exposition goes into the tree's growable buffer (engine/buf.h); a failed put sets oom. */
#define put(b, ...) ((void)ym_buf_printf((b), __VA_ARGS__))

int ym_metrics_render(ym_metrics_t *m, char **out, size_t *len)
{
    nums snap;
    pthread_mutex_lock(&m->lock);
    snap = m->v;
    pthread_mutex_unlock(&m->lock);

    ym_buf b = YM_BUF_INIT;
    if (ym_buf_reserve(&b, 8192) != YM_OK)
        return -1;
    put(&b, "# HELP yunmin_http_requests_total HTTP requests answered, by route and status.\n"
            "# TYPE yunmin_http_requests_total counter\n");
    for (int i = 0; i < snap.n_req; i++)
        put(&b, "yunmin_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n", snap.req[i].route,
            snap.req[i].status, (unsigned long long)snap.req[i].n);
    for (int c = 0; c < YM_M_N_COUNTERS; c++)
        put(&b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", cdefs[c].name, cdefs[c].help,
            cdefs[c].name, cdefs[c].name, (unsigned long long)snap.counter[c]);
    for (int g = 0; g < YM_M_N_GAUGES; g++)
        put(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", gdefs[g].name, gdefs[g].help,
            gdefs[g].name, gdefs[g].name, (long long)snap.gauge[g]);
    for (int h = 0; h < YM_M_N_HISTS; h++) {
        const hist_def *d = &hdefs[h];
        put(&b, "# HELP %s %s\n# TYPE %s histogram\n", d->name, d->help, d->name);
        uint64_t cum = 0;
        for (int k = 0; k < d->n; k++) {
            cum += snap.h[h].bucket[k];
            put(&b, "%s_bucket{le=\"%g\"} %llu\n", d->name, d->le[k], (unsigned long long)cum);
        }
        put(&b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", d->name,
            (unsigned long long)snap.h[h].count, d->name, snap.h[h].sum, d->name,
            (unsigned long long)snap.h[h].count);
    }
    if (b.oom) {
        ym_buf_deinit(&b);
        return -1;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}
