/* server/main.c - yunmind: settings, start-up, signals, drain and exit.
 *
 * Start-up order: settings -> the HTTP listener (so /healthz and /readyz answer at once) ->
 * model and tokenizer loaded on the libuv pool -> the engine thread -> ready. SIGTERM/SIGINT
 * drain: /readyz turns 503 and new work is refused while running requests finish (up to
 * drain_timeout_s, then they are cancelled); the process then exits 0. SIGHUP re-reads the
 * settings and applies the reloadable ones. Loop thread throughout. */
#include <libgen.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/blas.h"
#include "engine/fileio.h"
#include "engine/log.h"
#include "engine/pool.h"
#include "engine/sparse.h"
#include "engine/sparsity.h"

#include "server/disktier.h"
#include "server/redistier.h"
#include "server/server.h"

#define DRAIN_POLL_MS 100

static void apply_logging(const ym_conf *c)
{
    ym_log_set_plain(strcmp(c->log_format, "plain") == 0);
    ym_log_level lv = YM_LOG_INFO;
    if (strcmp(c->log_level, "debug") == 0)
        lv = YM_LOG_DEBUG;
    else if (strcmp(c->log_level, "warn") == 0)
        lv = YM_LOG_WARN;
    else if (strcmp(c->log_level, "error") == 0)
        lv = YM_LOG_ERROR;
    ym_log_set_level(lv);
}

static void wake_loop(void *arg) /* engine thread */
{
    ym_server_t *srv = arg;
    uv_async_send(&srv->ready_async);
}

/* The chat template, parsed once (libuv pool, with the model): the chat_template setting's file,
 * else the model directory's. None, or one that does not parse, leaves chat off (chat.c answers
 * 400) and the rest serving; a chat_template file that cannot be used stops the start, as any
 * setting naming a bad file does. The token strings come from the model directory. */
static ym_err load_chat_template(ym_server_t *srv)
{
    ym_chat_template_t *own = NULL;
    ym_diag d = {0};
    srv->chat_template_err = ym_chat_template_load(srv->conf.model, &own, &srv->chat_template_diag);
    if (srv->conf.chat_template[0] == '\0') {
        srv->chat_template = own;
        return YM_OK;
    }
    char *src = NULL;
    size_t len = 0;
    ym_err err = ym_read_file(srv->conf.chat_template, 16u << 20, &src, &len, &d);
    if (err == YM_OK)
        err = ym_chat_template_new(src, len, own ? ym_chat_template_bos(own) : NULL,
                                   own ? ym_chat_template_eos(own) : NULL, &srv->chat_template, &d);
    free(src);
    ym_chat_template_free(own);
    if (err != YM_OK) {
        ym_diag_set(&srv->load_diag, err, "chat_template %s: %s", srv->conf.chat_template, d.msg);
        return err;
    }
    srv->chat_template_err = YM_OK;
    return YM_OK;
}

static void load_work(uv_work_t *w) /* libuv pool */
{
    ym_server_t *srv = w->data;
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer.json", srv->conf.model);
    srv->load_err = ym_tok_load(path, &srv->tok, &srv->load_diag);
    ym_wtype wt = YM_WT_AUTO;
    if (srv->load_err == YM_OK)
        srv->load_err = ym_wtype_parse(srv->conf.weights, &wt, &srv->load_diag);
    if (srv->load_err == YM_OK)
        srv->load_err = ym_model_load_as(srv->conf.model, wt, &srv->model, &srv->load_diag);
    if (srv->load_err == YM_OK && (srv->load_err = load_chat_template(srv)) != YM_OK) {
        ym_model_unref(srv->model); /* a failed load leaves no model (after_load stops) */
        srv->model = NULL;
    }
    const char *sp_path = srv->conf.sparsity;
    if (strcmp(sp_path, "auto") == 0) {
        snprintf(path, sizeof(path), "%s/yunmin.sparsity.safetensors", srv->conf.model);
        sp_path = access(path, F_OK) == 0 ? path : "";
    }
    if (srv->load_err == YM_OK && sp_path[0] != '\0') {
        /* Serve the profile's layout: pruned matrices and the masked scan (engine/sparse.h). */
        ym_sparsity *sp = NULL;
        ym_model_t *sparse = NULL;
        srv->load_err = ym_sparsity_load(sp_path, &sp, &srv->load_diag);
        if (srv->load_err == YM_OK)
            srv->load_err = ym_model_new_sparse(srv->model, sp, &sparse, &srv->load_diag);
        ym_sparsity_free(sp);
        if (srv->load_err == YM_OK) {
            ym_model_unref(srv->model);
            srv->model = sparse;
            snprintf(srv->sparsity_path, sizeof(srv->sparsity_path), "%s", sp_path);
        } else {
            char msg[sizeof(srv->load_diag.msg)];
            snprintf(msg, sizeof(msg), "%s", srv->load_diag.msg);
            ym_diag_set(&srv->load_diag, srv->load_err, "sparsity profile %s: %s", sp_path, msg);
            ym_model_unref(srv->model); /* a failed load leaves no model (after_load stops) */
            srv->model = NULL;
        }
    }
}

static void shutdown_now(ym_server_t *srv);

static ym_err open_state_dir(ym_server_t *srv, ym_diag *diag);
static ym_err open_session_store(ym_server_t *srv, ym_diag *diag);

static void after_load(uv_work_t *w, int status)
{
    ym_server_t *srv = w->data;
    if (srv->stopping)
        return;
    if (srv->load_err != YM_OK) {
        ym_log(YM_LOG_ERROR, NULL, "cannot load the model from %s: %s", srv->conf.model,
               srv->load_diag.msg[0] ? srv->load_diag.msg : ym_strerror(srv->load_err));
        srv->exit_code = 1;
        shutdown_now(srv);
        return;
    }
    ym_sched_opts o = {
        .max_running = (int)srv->conf.max_running,
        .max_batch_tokens = (int)srv->conf.max_batch_tokens,
        .prefill_chunk = (int)srv->conf.prefill_chunk,
        .max_queue = (int)srv->conf.max_queue,
        .n_threads = (int)srv->conf.threads,
        .checkpoint_interval = (int)srv->conf.checkpoint_interval,
    };
    ym_diag diag = {0};
    ym_model_fingerprint(srv->model, srv->model_fp);
    ym_err err = ym_scache_new((size_t)srv->conf.cache_bytes, srv->metrics, &srv->cache);
    if (err == YM_OK && srv->conf.state_dir[0] != '\0')
        err = open_state_dir(srv, &diag);
    if (err == YM_OK && srv->conf.session_store[0] != '\0')
        err = open_session_store(srv, &diag);
    if (err == YM_OK)
        err = ym_sched_new(srv->model, srv->tok, &o, srv->metrics, srv->cache, wake_loop, srv,
                           &srv->sched, &diag);
    if (err != YM_OK) {
        ym_log(YM_LOG_ERROR, NULL, "cannot start the engine: %s",
               diag.msg[0] ? diag.msg : ym_strerror(err));
        srv->exit_code = 1;
        shutdown_now(srv);
        return;
    }
    srv->created = (int64_t)time(NULL);
    ym_adapters_start(srv);
    srv->ready = !srv->draining;
    ym_metrics_set(srv->metrics, YM_G_READY, srv->ready);
    const ym_config *c = &srv->model->cfg;
    ym_log(YM_LOG_INFO, NULL,
           "model %s loaded from %s: %d layers, d_model %d, vocab %d; engine threads %d, "
           "max_running %d, max_batch_tokens %d, blas core %s; state cache %llu MiB "
           "(%zu bytes per state), checkpoints every %d tokens",
           srv->model_name, srv->conf.model, c->n_layer, c->d_model, c->n_vocab,
           srv->conf.threads ? (int)srv->conf.threads : ym_n_cores(), o.max_running,
           o.max_batch_tokens, ym_blas_core(), (unsigned long long)(srv->conf.cache_bytes >> 20),
           ym_server_state_bytes(srv), o.checkpoint_interval);
    if (srv->chat_template != NULL)
        ym_log(YM_LOG_INFO, NULL, "chat template %s", srv->conf.chat_template[0]
                                                          ? srv->conf.chat_template
                                                          : "of the model directory");
    else
        ym_log(YM_LOG_WARN, NULL, "no chat template: /v1/chat/completions answers 400 (%s)",
               srv->chat_template_diag.msg[0] ? srv->chat_template_diag.msg
                                               : ym_strerror(srv->chat_template_err));
    if (srv->sparsity_path[0] != '\0')
        ym_log(YM_LOG_INFO, NULL,
               "serving the sparsity profile %s: %lld of %lld channels kept, %lld live state "
               "entries (adapters are compiled against this layout)",
               srv->sparsity_path, (long long)srv->model->n_channels_kept,
               (long long)c->n_layer * c->d_inner, (long long)srv->model->n_states_live);
}

/* The state cache's disk tier (docs/SERVER.md "State tiers"). */
static ym_err open_state_dir(ym_server_t *srv, ym_diag *diag)
{
    ym_state_t *like = NULL;
    ym_err err = ym_state_new_for_model(srv->model, &like);
    if (err != YM_OK)
        return err;
    ym_disktier_opts o = {.dir = srv->conf.state_dir, .budget = srv->conf.state_dir_bytes,
                          .fsync = (int)srv->conf.state_fsync,
                          .secret = srv->conf.state_secret};
    ym_disktier_t *d = NULL;
    err = ym_disktier_open(&o, like, srv->model_fp, srv->metrics, &d, diag);
    ym_state_free(like);
    if (err == YM_OK)
        ym_scache_set_disk(srv->cache, d); /* the cache owns it */
    return err;
}

/* The shared store tier (docs/SERVER.md "State tiers"). */
static ym_err open_session_store(ym_server_t *srv, ym_diag *diag)
{
    if (srv->conf.state_secret[0] == '\0')
        return ym_diag_set(diag, YM_EINVAL,
                           "session_store needs state_secret (the same on every replica)");
    ym_state_t *like = NULL;
    ym_err err = ym_state_new_for_model(srv->model, &like);
    if (err != YM_OK)
        return err;
    unsigned char key[32];
    ym_state_mac_key_from_secret(srv->conf.state_secret, key);
    ym_redistier_opts o = {.url = srv->conf.session_store,
                           .ttl_s = srv->conf.session_store_ttl_s,
                           .timeout_ms = srv->conf.session_store_timeout_ms,
                           .mac_key = key};
    ym_redistier_t *r = NULL;
    err = ym_redistier_open(&o, like, srv->model_fp, srv->metrics, &r, diag);
    ym_state_free(like);
    sodium_memzero(key, sizeof(key));
    if (err == YM_OK)
        ym_scache_set_store(srv->cache, r); /* the cache owns it */
    return err;
}

static void on_closed(uv_handle_t *h)
{
}

static void shutdown_now(ym_server_t *srv)
{
    if (srv->stopping)
        return;
    srv->stopping = 1;
    srv->ready = 0;
    /* The engine first: it cancels what is left and publishes it; then the connections. */
    for (ym_hreq *r = srv->gens; r != NULL; r = r->next)
        if (r->gen != NULL) /* a prompt still being tokenized, or an upload: no job */
            ym_gen_cancel(r->gen);
    ym_sched_t *sched = srv->sched;
    if (sched != NULL) {
        ym_sched_free(sched); /* joins; unrefs what was still on the ready list */
        srv->sched = NULL;
    }
    ym_httpd_stop(srv);
    if (srv->model != NULL)
        ym_adapters_stop(srv);
    uv_close((uv_handle_t *)&srv->sig_term, on_closed);
    uv_close((uv_handle_t *)&srv->sig_int, on_closed);
    uv_close((uv_handle_t *)&srv->sig_hup, on_closed);
}

static uv_timer_t drain_timer;

static void on_drain_tick(uv_timer_t *t)
{
    ym_server_t *srv = t->data;
    double waited = ym_now() - srv->drain_start;
    if (srv->n_gens == 0) {
        ym_log(YM_LOG_INFO, NULL, "drained in %.2f s; exiting", waited);
    } else if (waited >= (double)srv->conf.drain_timeout_s) {
        ym_log(YM_LOG_WARN, NULL, "drain timeout: cancelling %d running requests", srv->n_gens);
    } else {
        return;
    }
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, on_closed);
    shutdown_now(srv);
}

static void on_term(uv_signal_t *s, int signum)
{
    ym_server_t *srv = s->data;
    if (srv->draining) {
        if (signum == SIGINT) { /* a second Ctrl-C: stop now */
            ym_log(YM_LOG_WARN, NULL, "second interrupt: stopping without waiting");
            srv->drain_start = -1e9;
        }
        return;
    }
    srv->draining = 1;
    srv->ready = 0;
    srv->drain_start = ym_now();
    ym_metrics_set(srv->metrics, YM_G_READY, 0);
    ym_log(YM_LOG_INFO, NULL, "%s: draining (%d requests running, up to %llu s)",
           signum == SIGTERM ? "SIGTERM" : "SIGINT", srv->n_gens,
           (unsigned long long)srv->conf.drain_timeout_s);
    uv_timer_init(srv->loop, &drain_timer);
    drain_timer.data = srv;
    uv_timer_start(&drain_timer, on_drain_tick, 0, DRAIN_POLL_MS);
}

/* The tenants table for the current settings: the file's, or open mode. */
static ym_err load_tenants(const ym_conf *c, ym_tenants_t **out, ym_diag *diag)
{
    if (c->tenants_file == NULL || c->tenants_file[0] == '\0')
        return ym_tenants_open(out);
    return ym_tenants_load(c->tenants_file, out, diag);
}

static void log_tenants(const ym_server_t *srv)
{
    if (ym_tenants_is_open(srv->tenants))
        ym_log(YM_LOG_WARN, NULL,
               "no tenants file: open mode, every request is tenant \"default\" and needs no "
               "API key");
    else
        ym_log(YM_LOG_INFO, NULL, "%d tenants from %s; /v1 requests need an API key",
               ym_tenants_count(srv->tenants), srv->conf.tenants_file);
}

static void on_hup(uv_signal_t *s, int signum)
{
    ym_server_t *srv = s->data;
    ym_conf next;
    int action = 0;
    ym_diag diag = {0};
    if (ym_conf_load(&next, srv->argc, srv->argv, NULL, &action, &diag) != YM_OK) {
        ym_log(YM_LOG_ERROR, NULL, "SIGHUP: settings not reloaded: %s", diag.msg);
        return;
    }
    ym_tenants_t *tenants = NULL;
    if (load_tenants(&next, &tenants, &diag) != YM_OK) {
        ym_log(YM_LOG_ERROR, NULL, "SIGHUP: settings not reloaded: %s", diag.msg);
        ym_conf_deinit(&next);
        return;
    }
    int n = ym_conf_apply_reload(&srv->conf, &next);
    ym_conf_deinit(&next);
    ym_tenants_free(srv->tenants);
    srv->tenants = tenants;
    log_tenants(srv);
    apply_logging(&srv->conf);
    if (srv->sched != NULL) {
        ym_sched_set_limits(srv->sched, (int)srv->conf.max_running, (int)srv->conf.prefill_chunk,
                            (int)srv->conf.max_queue);
        ym_scache_set_budget(srv->cache, (size_t)srv->conf.cache_bytes);
        ym_adapters_rescan(srv);
    }
    ym_log(YM_LOG_INFO, NULL, "SIGHUP: settings reloaded (%d changed)", n);
}

int main(int argc, char **argv)
{
    ym_blas_reexec(argv); /* the right OpenBLAS kernel for this CPU (engine/blas.h) */
    ym_blas_single_thread();
    signal(SIGPIPE, SIG_IGN);

    static ym_server_t srv;
    srv.routes = ym_routes; /* the transport dispatches through the table (routes.c) */
    srv.n_routes = ym_n_routes;
    int action = 0;
    ym_diag diag = {0};
    if (ym_conf_load(&srv.conf, argc, argv, NULL, &action, &diag) != YM_OK) {
        fprintf(stderr, "yunmind: %s\n", diag.msg);
        return 2;
    }
    if (action == 1) {
        ym_conf_usage(stdout);
        ym_conf_deinit(&srv.conf);
        return 0;
    }
    if (action == 2) {
        printf("yunmind %s\n", YM_VERSION);
        ym_conf_deinit(&srv.conf);
        return 0;
    }
    if (action == 4 || action == 5) {
        ym_conf_deinit(&srv.conf);
        if (ym_tenants_init() != 0) {
            fprintf(stderr, "yunmind: cannot initialise libsodium\n");
            return 1;
        }
        char key[4096 + 2], hash[72];
        if (action == 4) {
            ym_tenants_new_key(key);
        } else if (fgets(key, sizeof(key), stdin) == NULL) {
            fprintf(stderr, "yunmind: --hash-key reads the key on stdin\n");
            return 2;
        }
        size_t n = strlen(key);
        while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r' || key[n - 1] == ' '))
            key[--n] = '\0';
        if (n == 0 || n > 4096) {
            fprintf(stderr, "yunmind: the key must be 1-4096 characters\n");
            return 2;
        }
        ym_tenants_hash_key(key, n, hash);
        if (action == 4)
            printf("{\"key\": \"%s\", \"hash\": \"%s\"}\n", key, hash);
        else
            printf("%s\n", hash);
        return 0;
    }
    if (action == 3) {
        char *s = ym_conf_dump(&srv.conf);
        printf("%s\n", s ? s : "{}");
        free(s);
        ym_conf_deinit(&srv.conf);
        return 0;
    }
    apply_logging(&srv.conf);
    if (ym_tenants_init() != 0) {
        fprintf(stderr, "yunmind: cannot initialise libsodium\n");
        return 1;
    }
    if (load_tenants(&srv.conf, &srv.tenants, &diag) != YM_OK) {
        fprintf(stderr, "yunmind: %s\n", diag.msg);
        ym_conf_deinit(&srv.conf);
        return 2;
    }
    srv.argc = argc;
    srv.argv = argv;
    if (srv.conf.served_model_name[0] != '\0') {
        snprintf(srv.model_name, sizeof(srv.model_name), "%s", srv.conf.served_model_name);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s", srv.conf.model);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/')
            tmp[--n] = '\0';
        snprintf(srv.model_name, sizeof(srv.model_name), "%s", basename(tmp));
    }
    if ((srv.metrics = ym_metrics_new()) == NULL) {
        fprintf(stderr, "yunmind: out of memory\n");
        return 1;
    }
    srv.loop = uv_default_loop();
    if (ym_httpd_start(&srv, &diag) != 0) {
        fprintf(stderr, "yunmind: %s\n", diag.msg);
        ym_metrics_free(srv.metrics);
        ym_tenants_free(srv.tenants);
        ym_conf_deinit(&srv.conf);
        return 1;
    }
    ym_log(YM_LOG_INFO, NULL, "listening on http://%s:%d (model %s loading from %s)%s",
           srv.conf.host, srv.port, srv.model_name, srv.conf.model,
           srv.conf.config ? "" : "; no config file, built-in defaults");
    log_tenants(&srv);
    printf("yunmind: listening on http://%s:%d\n", srv.conf.host, srv.port);
    fflush(stdout);

    uv_signal_init(srv.loop, &srv.sig_term);
    uv_signal_init(srv.loop, &srv.sig_int);
    uv_signal_init(srv.loop, &srv.sig_hup);
    srv.sig_term.data = srv.sig_int.data = srv.sig_hup.data = &srv;
    uv_signal_start(&srv.sig_term, on_term, SIGTERM);
    uv_signal_start(&srv.sig_int, on_term, SIGINT);
    uv_signal_start(&srv.sig_hup, on_hup, SIGHUP);
    srv.load_work.data = &srv;
    uv_queue_work(srv.loop, &srv.load_work, load_work, after_load);

    uv_run(srv.loop, UV_RUN_DEFAULT);
    uv_loop_close(srv.loop);
    ym_registry_deinit(&srv.registry);
    free(srv.watches);
    free(srv.watch_names);
    ym_scache_free(srv.cache); /* after the engine: nothing is pinned any more */
    ym_model_unref(srv.model);
    ym_tok_free(srv.tok);
    ym_chat_template_free(srv.chat_template);
    ym_metrics_free(srv.metrics);
    ym_tenants_free(srv.tenants);
    free(srv.load);
    ym_conf_deinit(&srv.conf);
    return srv.exit_code;
}
