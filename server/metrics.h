/* server/metrics.h - counters, gauges and histograms for /metrics (Prometheus text format).
 *
 * Any thread may record (a mutex guards the numbers; recording is a few adds); the loop thread
 * renders. Histograms have fixed buckets chosen for token latencies and step times. */
#ifndef YM_SERVER_METRICS_H
#define YM_SERVER_METRICS_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
    YM_M_PROMPT_TOKENS,    /* prompt tokens of admitted requests */
    YM_M_GEN_TOKENS,       /* generated tokens */
    YM_M_PREFILL_TOKENS,   /* prompt tokens run through the model */
    YM_M_CANCELLED,        /* requests cancelled (client gone, drain timeout) */
    YM_M_REJECTED_BUSY,    /* 503 because the queue was full */
    YM_M_STEPS,            /* engine steps */
    YM_M_CACHE_SESSION_HITS, /* requests resumed from their session's state */
    YM_M_CACHE_PREFIX_HITS,  /* requests resumed from a prefix checkpoint */
    YM_M_CACHE_MISSES,       /* requests that found no state to resume from */
    YM_M_CACHE_SAVED_TOKENS, /* prompt tokens not run thanks to a cached state */
    YM_M_CACHE_STORES,       /* states stored (sessions and checkpoints) */
    YM_M_CACHE_EVICTIONS,    /* states evicted to stay in the budget */
    YM_M_BODY_TOO_LARGE,     /* request bodies refused with 413 (max_body_bytes) */
    YM_M_DISK_HITS,          /* states read from the disk tier after a RAM miss */
    YM_M_DISK_MISSES,        /* RAM misses the disk tier had no file for */
    YM_M_DISK_WRITES,        /* state files written */
    YM_M_DISK_ERRORS,        /* state file reads or writes that failed (i/o) */
    YM_M_DISK_REFUSED,       /* state files refused (MAC, checksum, model) and deleted */
    YM_M_DISK_EVICTIONS,     /* state files removed to stay in state_dir_bytes */
    YM_M_STORE_HITS,         /* states read from the shared store after RAM and disk missed */
    YM_M_STORE_MISSES,       /* lookups the store had no entry for (or was down for) */
    YM_M_STORE_WRITES,       /* states written to the store */
    YM_M_STORE_ERRORS,       /* store connections or commands that failed */
    YM_M_STORE_REFUSED,      /* store entries refused (MAC, checksum, model) and deleted */
    YM_M_N_COUNTERS
} ym_counter;

typedef enum {
    YM_G_QUEUE,            /* requests waiting for a running slot */
    YM_G_RUNNING,          /* sequences in the running batch */
    YM_G_CONNECTIONS,      /* open HTTP requests being served */
    YM_G_READY,            /* 1 when /readyz says ready */
    YM_G_CACHE_BYTES,      /* bytes held by the state cache */
    YM_G_CACHE_BUDGET,     /* its budget */
    YM_G_CACHE_SESSIONS,   /* sessions held */
    YM_G_CACHE_PREFIXES,   /* prefix checkpoints held */
    YM_G_DISK_BYTES,       /* bytes of state files in state_dir */
    YM_G_DISK_BUDGET,      /* state_dir_bytes */
    YM_G_DISK_FILES,       /* state files in state_dir */
    YM_M_N_GAUGES
} ym_gauge;

typedef enum {
    YM_H_TTFT,             /* seconds from arrival to the first generated token */
    YM_H_ITL,              /* seconds between two tokens of one sequence */
    YM_H_E2E,              /* seconds from arrival to the end of the request */
    YM_H_STEP,             /* seconds per engine step */
    YM_H_BATCH_ROWS,       /* rows per engine step */
    YM_H_BATCH_SEQS,       /* sequences per engine step */
    YM_H_DISK_WRITE,       /* seconds to write one state file (format, write, rename) */
    YM_H_STORE_WRITE,      /* seconds to write one state to the store (format, SET) */
    YM_M_N_HISTS
} ym_hist;

typedef struct ym_metrics ym_metrics_t;

ym_metrics_t *ym_metrics_new(void); /* new object or NULL (ym_metrics_free) */
void ym_metrics_free(ym_metrics_t *m); /* NULL-safe */
void ym_metrics_add(ym_metrics_t *m, ym_counter c, uint64_t v);
void ym_metrics_set(ym_metrics_t *m, ym_gauge g, int64_t v);
void ym_metrics_observe(ym_metrics_t *m, ym_hist h, double v);
/* One finished HTTP request: route is a fixed label ("/v1/completions", "other"). */
void ym_metrics_request(ym_metrics_t *m, const char *route, int status);
/* The text exposition. New string in *out (free()), length in *len. 0 or -1 on no memory. */
int ym_metrics_render(ym_metrics_t *m, char **out, size_t *len);

#endif
