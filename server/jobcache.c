/* server/jobcache.c - the glue between generation jobs and the state cache.
 *
 * Owns: nothing of its own: it keys, looks up and stores states of server/statecache.h for a
 * job. Runs: engine thread. At admission a job resumes from the longest cached state its
 * prompt extends (its session's if the history hash matches, else the longest prefix
 * checkpoint), so only the rest of the prompt runs; at least one prompt token is always run,
 * for the logits of the first sample. Prefill chunks end at checkpoint boundaries and the state
 * there is stored, so a checkpoint is the very state a cold run passes through; boundaries
 * reached while generating are stored too (the chain runs over every token fed). When a job
 * with a session ends (stop, length or cancel; not on an engine error), its state and the hash
 * of the tokens it consumed (prompt and fed generated tokens: the last sampled token is never
 * fed, it is kept as the session's pending token) become the session. An append job
 * (session_append) carries only the tokens after its session's history: it starts from the
 * session's state and running history hash, and makes no checkpoints (it does not have the
 * tokens their keys are made of). Must not: run the model or schedule.
 *
 * Lookups that may need I/O (a RAM miss answered by the disk tier or the shared store) run
 * before admission on the scheduler's lookup thread (ym__jobcache_prefetch), which pins what
 * it finds in the job; the engine thread's resume then reads RAM and those pins only, so a
 * slow disk or store delays only the request that needs it, never the running sequences. */
#include <stdlib.h>

#include "engine/log.h"
#include "server/job_int.h"


/* Keep g's state as its session's: the state moves into the cache. done(arg) is called
 * exactly once: when the state is durable (its file written, with a disk tier), or at once. */
void ym__jobcache_store_session(const ym_jobcache *jc, ym_gen *g, void (*done)(void *),
                                void *arg)
{
    if (jc->cache == NULL || g->session == NULL || g->state == NULL ||
        g->state->n_tokens <= 0) {
        if (done)
            done(arg);
        return;
    }
    if (g->state->n_tokens != g->base + g->n_prefilled + g->n_fed) {
        /* A token the job did not record reached the state: never store a history that
         * does not describe it. */
        ym_log(YM_LOG_ERROR, g->id, "session %s not stored: state history mismatch", g->session);
        if (done)
            done(arg);
        return;
    }
    ym_skey key;
    ym_sc_meta meta = {.root = g->root, .run = g->run0, .appendable = 1, .pending = g->pending};
    ym_skey_session(&key, g->tenant, g->session);
    ym_shist_update(&meta.run, g->prompt, (size_t)g->n_prefilled);
    ym_shist_update(&meta.run, g->fed, (size_t)g->n_fed);
    ym_shist_final(&meta.run, &meta.hist);
    int rc = ym_scache_put_durable(jc->cache, &key, YM_SC_SESSION, &meta, g->state, done, arg);
    g->state = NULL; /* the cache took it (or freed it) */
    if (rc == 1)
        ym_metrics_add(jc->metrics, YM_M_CACHE_STORES, 1);
}

/* Store the state after checkpoint block k (1-based) of g's prompt, unless cached already. */
void ym__jobcache_store_checkpoint(const ym_jobcache *jc, ym_gen *g, int k)
{
    if (ym_scache_touch(jc->cache, &g->chain[k - 1]))
        return;
    ym_state_t *st = NULL;
    if (ym_state_new_like(g->state, &st) != YM_OK)
        return;
    ym_state_copy(st, g->state);
    if (ym_scache_put(jc->cache, &g->chain[k - 1], YM_SC_PREFIX, NULL, st) == 1)
        ym_metrics_add(jc->metrics, YM_M_CACHE_STORES, 1);
}

/* Record the token a decode row fed; at a checkpoint boundary, chain and store. 0, or -1 when
 * out of memory (then the job stops recording: no session or checkpoint from it). */
int ym__jobcache_record_fed(const ym_jobcache *jc, ym_gen *g, int32_t id)
{
    if (g->n_fed == g->fed_cap) {
        int cap = g->fed_cap ? 2 * g->fed_cap : 64;
        int32_t *f = realloc(g->fed, (size_t)cap * sizeof(int32_t));
        if (f == NULL)
            return -1;
        g->fed = f;
        g->fed_cap = cap;
    }
    g->fed[g->n_fed++] = id;
    int B = jc->checkpoint_interval;
    if (g->append)
        return 0; /* no chain: the history's tokens are not here */
    int consumed = g->n_prompt + g->n_fed;
    if (B == 0 || consumed % B != 0)
        return 0;
    int k = consumed / B;
    if (k != g->n_chain + 1)
        return 0; /* an earlier block is missing (out of memory before) */
    if (g->n_chain == g->chain_cap) {
        int cap = g->chain_cap ? 2 * g->chain_cap : 8;
        ym_skey *c = realloc(g->chain, (size_t)cap * sizeof(ym_skey));
        if (c == NULL)
            return 0;
        g->chain = c;
        g->chain_cap = cap;
    }
    /* The block is [consumed - B, consumed): prompt tail, then fed tokens. */
    int start = consumed - B;
    int from_prompt = start < g->n_prompt ? g->n_prompt - start : 0;
    int fed_start = start < g->n_prompt ? 0 : start - g->n_prompt;
    ym_skey_chain(&g->chain[k - 1], k == 1 ? &g->root : &g->chain[k - 2],
                  g->prompt + start, (size_t)from_prompt, g->fed + fed_start,
                  (size_t)(B - from_prompt));
    g->n_chain = k;
    ym__jobcache_store_checkpoint(jc, g, k);
    return 0;
}

/* Keep e (pinned) in slot i of g's prefetched entries, under key. */
static void keep(ym_gen *g, int i, const ym_skey *key, ym_sc_entry *e)
{
    g->pre[i] = e;
    g->pre_key[i] = *key;
}

void ym__jobcache_prefetch(const ym_jobcache *jc, ym_gen *g)
{
    ym_skey root;
    ym_skey_root(&root, g->tenant, g->identity);
    int best = 0;
    if (g->session != NULL) {
        ym_skey key;
        ym_skey_session(&key, g->tenant, g->session);
        ym_sc_entry *e = ym_scache_pin(jc->cache, &key);
        int64_t m = e ? ym_sc_entry_state(e)->n_tokens : 0;
        if (e != NULL && g->append) {
            keep(g, 0, &key, e); /* resume_append checks it */
            return;
        }
        if (m > 0 && m < g->n_prompt) {
            ym_skey h;
            ym_skey_history(&h, &root, g->prompt, (size_t)m, NULL, 0);
            if (ym_skey_equal(&h, &ym_sc_entry_meta(e)->hist)) {
                keep(g, 0, &key, e);
                best = (int)m;
                e = NULL;
            }
        }
        ym_scache_unpin(jc->cache, e);
    }
    int B = jc->checkpoint_interval;
    if (g->append || B <= 0 || (g->n_prompt - 1) / B * B <= best)
        return;
    /* The same walk as resume: the longest boundary that leaves a prompt token to run. */
    int k_max = (g->n_prompt - 1) / B;
    ym_skey *chain = malloc((size_t)k_max * sizeof(ym_skey));
    if (chain == NULL)
        return; /* resume finds what RAM has */
    for (int k = 1; k <= k_max; k++)
        ym_skey_chain(&chain[k - 1], k == 1 ? &root : &chain[k - 2],
                      g->prompt + (size_t)(k - 1) * (size_t)B, (size_t)B, NULL, 0);
    /* Longest first, as resume walks them: boundaries k_max down to the first past best. The
     * store is asked about all of them in one round trip (ym_scache_pin_first). */
    int n = k_max - best / B;
    for (int i = 0; i < n / 2; i++) {
        ym_skey t = chain[best / B + i];
        chain[best / B + i] = chain[k_max - 1 - i];
        chain[k_max - 1 - i] = t;
    }
    int which;
    ym_sc_entry *e = ym_scache_pin_first(jc->cache, chain + best / B, n, &which);
    if (e != NULL)
        keep(g, 1, &chain[best / B + which], e);
    free(chain);
}

void ym__jobcache_release(const ym_jobcache *jc, ym_gen *g)
{
    for (int i = 0; i < 2; i++) {
        if (g->pre[i] != NULL)
            ym_scache_unpin(jc->cache, g->pre[i]);
        g->pre[i] = NULL;
    }
}

/* The entry under key, pinned: from RAM (the newest), else the one the lookup thread found
 * (its pin passes to the caller). Never reads the disk or the store. */
static ym_sc_entry *pin(const ym_jobcache *jc, ym_gen *g, const ym_skey *key)
{
    ym_sc_entry *e = ym_scache_pin_ram(jc->cache, key);
    for (int i = 0; e == NULL && i < 2; i++) {
        if (g->pre[i] != NULL && ym_skey_equal(&g->pre_key[i], key)) {
            e = g->pre[i];
            g->pre[i] = NULL;
        }
    }
    return e;
}

/* Append mode: start from the session the loop checked, if it is still that one. */
static ym_err resume_append(const ym_jobcache *jc, ym_gen *g)
{
    ym_skey key;
    ym_skey_session(&key, g->tenant, g->session);
    ym_sc_entry *e = pin(jc, g, &key);
    ym_err err = YM_EEXIST;
    if (e != NULL && ym_sc_entry_serial(e) == g->append_serial &&
        ym_sc_entry_meta(e)->appendable && ym_skey_equal(&ym_sc_entry_meta(e)->root, &g->root) &&
        ym_sc_entry_state(e)->n_tokens == g->base &&
        ym_state_copy(g->state, ym_sc_entry_state(e)) == YM_OK) {
        g->run0 = ym_sc_entry_meta(e)->run;
        pthread_mutex_lock(&g->lock);
        g->n_cached = (int)g->base;
        pthread_mutex_unlock(&g->lock);
        ym_metrics_add(jc->metrics, YM_M_CACHE_SESSION_HITS, 1);
        ym_metrics_add(jc->metrics, YM_M_CACHE_SAVED_TOKENS, (uint64_t)g->base);
        err = YM_OK;
    } else {
        ym_log(YM_LOG_WARN, g->id,
               "session %s changed or was evicted before the appended turn started", g->session);
        free(g->session); /* do not overwrite the session that replaced it */
        g->session = NULL;
    }
    ym_scache_unpin(jc->cache, e);
    return err;
}

/* Find the longest cached state g's prompt extends and start from it. */
ym_err ym__jobcache_resume(const ym_jobcache *jc, ym_gen *g)
{
    int B = jc->checkpoint_interval;
    ym_skey_root(&g->root, g->tenant, g->identity);
    ym_shist_init(&g->run0, &g->root);
    if (g->append)
        return resume_append(jc, g);
    ym_sc_entry *src = NULL;
    int best = 0, from_session = 0;
    if (g->session != NULL) {
        ym_skey key;
        ym_skey_session(&key, g->tenant, g->session);
        ym_sc_entry *e = pin(jc, g, &key);
        int64_t m = e ? ym_sc_entry_state(e)->n_tokens : 0;
        if (m > 0 && m < g->n_prompt) {
            ym_skey h;
            ym_skey_history(&h, &g->root, g->prompt, (size_t)m, NULL, 0);
            if (ym_skey_equal(&h, &ym_sc_entry_meta(e)->hist)) {
                src = e;
                best = (int)m;
                from_session = 1;
            }
        }
        if (src == NULL)
            ym_scache_unpin(jc->cache, e);
    }
    if (B > 0 && g->n_prompt / B > 0 &&
        (g->chain = malloc((size_t)(g->n_prompt / B) * sizeof(ym_skey))) != NULL) {
        g->n_chain = g->n_chain_prompt = g->chain_cap = g->n_prompt / B;
        for (int k = 1; k <= g->n_chain; k++)
            ym_skey_chain(&g->chain[k - 1], k == 1 ? &g->root : &g->chain[k - 2],
                          g->prompt + (size_t)(k - 1) * (size_t)B, (size_t)B, NULL, 0);
        /* Resuming must leave a prompt token to run: k * B < n_prompt. */
        for (int k = (g->n_prompt - 1) / B; k >= 1 && k * B > best && !g->score_prompt; k--) {
            ym_sc_entry *e = pin(jc, g, &g->chain[k - 1]);
            if (e != NULL) {
                ym_scache_unpin(jc->cache, src);
                src = e;
                best = k * B;
                from_session = 0;
                break;
            }
        }
    }
    if (src != NULL && ym_state_copy(g->state, ym_sc_entry_state(src)) == YM_OK &&
        g->state->n_tokens == best) {
        g->n_prefilled = best;
        pthread_mutex_lock(&g->lock);
        g->n_cached = best;
        pthread_mutex_unlock(&g->lock);
        ym_metrics_add(jc->metrics,
                       from_session ? YM_M_CACHE_SESSION_HITS : YM_M_CACHE_PREFIX_HITS, 1);
        ym_metrics_add(jc->metrics, YM_M_CACHE_SAVED_TOKENS, (uint64_t)best);
    } else {
        ym_state_reset(g->state);
        ym_metrics_add(jc->metrics, YM_M_CACHE_MISSES, 1);
    }
    ym_scache_unpin(jc->cache, src);
    return YM_OK;
}

