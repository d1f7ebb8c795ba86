/* tools/cmd_inspect.c - `yunmin inspect`: what a model directory holds: every config field,
 * parameter count, weight and file bytes, state bytes per sequence, vocabulary sizes, EOS.
 * Text by default, a JSON object with --json. A missing tokenizer.json is reported, not fatal. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/blas.h"
#include "engine/config.h"
#include "engine/sparsity.h"
#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin inspect [DIR | --model DIR] [--json] [--sparsity FILE]\n"
               "Describes the model: config, parameters, bytes, state size, vocabulary;\n"
               "with --sparsity, the model as served under that profile (kept channels,\n"
               "live state entries and scan lanes per layer).\n");
}

int ym_cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"json", no_argument, NULL, 'j'},
        {"sparsity", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *sparsity = NULL;
    int as_json = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:s:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_arg = optarg;
            break;
        case 'j':
            as_json = 1;
            break;
        case 's':
            sparsity = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("inspect", argv, c);
        }
    }
    if (optind < argc) {
        if (model_arg != NULL || optind + 1 < argc)
            return cli_extra_arg("inspect", argv[model_arg != NULL ? optind : optind + 1]);
        model_arg = argv[optind];
    }
    const char *dir = cli_model_dir(model_arg);

    ym_model_t *model = NULL;
    int rc = cli_load_model(dir, &model);
    if (rc != 0)
        return rc;
    char method[64] = "";
    if (sparsity != NULL) {
        ym_sparsity *sp = NULL;
        ym_diag sd = {0};
        if (ym_sparsity_load(sparsity, &sp, &sd) == YM_OK)
            snprintf(method, sizeof(method), "%s", sp->method);
        ym_sparsity_free(sp);
        if ((rc = cli_apply_sparsity(sparsity, &model)) != 0) {
            ym_model_unref(model);
            return rc;
        }
    }
    /* The tokenizer is optional here: a model without one can still be described. */
    char path[4096];
    ym_tok_t *tok = NULL;
    ym_diag diag = {0};
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    ym_err tok_err = ym_tok_load(path, &tok, &diag);

    const ym_config *cfg = &model->cfg;
    json_t *o = json_object();
    json_t *jc = json_object();
#define SET_INT(obj, k, v) json_object_set_new(obj, k, json_integer((json_int_t)(v)))
#define SET_BOOL(obj, k, v) json_object_set_new(obj, k, json_boolean(v))
    json_object_set_new(jc, "arch", json_string(ym_arch_name(cfg->arch)));
    SET_INT(jc, "d_model", cfg->d_model);
    SET_INT(jc, "n_layer", cfg->n_layer);
    SET_INT(jc, "d_inner", cfg->d_inner);
    SET_INT(jc, "d_state", cfg->d_state);
    SET_INT(jc, "d_conv", cfg->d_conv);
    SET_INT(jc, "dt_rank", cfg->dt_rank);
    SET_INT(jc, "n_vocab", cfg->n_vocab);
    SET_BOOL(jc, "use_bias", cfg->use_bias);
    SET_BOOL(jc, "use_conv_bias", cfg->use_conv_bias);
    SET_BOOL(jc, "tie_embeddings", cfg->tie_embeddings);
    json_object_set_new(jc, "norm_eps", json_real(cfg->norm_eps));
    SET_BOOL(jc, "residual_in_fp32", cfg->residual_in_fp32);
    SET_INT(jc, "bos_id", cfg->bos_id);
    SET_INT(jc, "eos_id", cfg->eos_id);
    SET_INT(jc, "pad_id", cfg->pad_id);
    SET_BOOL(jc, "state_spaces", cfg->state_spaces);
    if (cfg->arch == YM_ARCH_MAMBA2) {
        SET_INT(jc, "n_head", cfg->n_head);
        SET_INT(jc, "head_dim", cfg->head_dim);
        SET_INT(jc, "n_group", cfg->n_group);
        SET_INT(jc, "chunk_size", cfg->chunk_size);
        json_object_set_new(jc, "dt_min", json_real(cfg->dt_min));
        if (isfinite(cfg->dt_max)) /* JSON has no infinity: absent means no upper clamp */
            json_object_set_new(jc, "dt_max", json_real(cfg->dt_max));
        json_object_set_new(jc, "gated_norm_eps", json_real(cfg->gated_norm_eps));
    }
    if (cfg->arch == YM_ARCH_FALCON_MAMBA)
        json_object_set_new(jc, "mixer_rms_eps", json_real(cfg->mixer_rms_eps));
    json_object_set_new(o, "model", json_string(dir));
    json_object_set_new(o, "config", jc);
    SET_INT(o, "n_params", model->n_params);
    SET_INT(o, "weight_bytes", model->weight_bytes);
    json_object_set_new(o, "weights", json_string(ym_wtype_name(model->wtype)));
    SET_INT(o, "file_bytes", model->file_bytes);
    SET_INT(o, "state_bytes", ym_config_state_bytes(cfg));
    SET_INT(o, "n_vocab", cfg->n_vocab);
    json_object_set_new(o, "blas_core", json_string(ym_blas_core()));
    if (tok != NULL) {
        SET_INT(o, "tokenizer_n_vocab", ym_tok_n_vocab(tok));
        SET_INT(o, "eos_id", ym_tok_eos_id(tok));
    } else {
        json_object_set_new(o, "tokenizer_n_vocab", json_null());
        json_object_set_new(o, "eos_id", cfg->eos_id >= 0 ? json_integer(cfg->eos_id)
                                                          : json_null());
        json_object_set_new(o, "tokenizer_error",
                            json_string(diag.msg[0] ? diag.msg : ym_strerror(tok_err)));
    }
    if (sparsity != NULL) {
        json_t *js = json_object();
        json_t *jl = json_array();
        json_object_set_new(js, "path", json_string(sparsity));
        json_object_set_new(js, "method", json_string(method));
        double all_ch = (double)cfg->n_layer * cfg->d_inner;
        json_object_set_new(js, "channel_live_fraction",
                            json_real((double)model->n_channels_kept / all_ch));
        json_object_set_new(js, "state_live_fraction",
                            json_real((double)model->n_states_live / (all_ch * cfg->d_state)));
        json_object_set_new(js, "scan_block_fill",
                            json_real(model->n_scan_lanes > 0 ? (double)model->n_states_live /
                                                                    (double)model->n_scan_lanes
                                                              : 1.0));
        for (int l = 0; l < cfg->n_layer; l++) {
            const ym_layer *L = &model->layers[l];
            json_t *e = json_object();
            SET_INT(e, "channels", L->d_inner);
            SET_INT(e, "live_states", L->scan ? L->scan->n_live : 0);
            SET_INT(e, "scan_lanes", L->scan ? L->scan->n_lanes : 0);
            json_array_append_new(jl, e);
        }
        json_object_set_new(js, "layers", jl);
        json_object_set_new(o, "sparsity", js);
    } else {
        json_object_set_new(o, "sparsity", json_null());
    }
#undef SET_INT
#undef SET_BOOL

    if (as_json) {
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        if (s == NULL) {
            rc = cli_error(CLI_FAIL, "out of memory");
        } else {
            puts(s);
            free(s);
        }
    } else {
        printf("model             %s\n", dir);
        const char *k;
        json_t *v;
        json_object_foreach(jc, k, v)
        {
            if (json_is_string(v))
                printf("  %-17s%s\n", k, json_string_value(v));
            else if (json_is_boolean(v))
                printf("  %-17s%s\n", k, json_is_true(v) ? "true" : "false");
            else if (json_is_real(v))
                printf("  %-17s%g\n", k, json_real_value(v));
            else
                printf("  %-17s%lld\n", k, (long long)json_integer_value(v));
        }
        printf("parameters        %zu (%.2f M)\n", model->n_params, (double)model->n_params / 1e6);
        printf("weight bytes      %zu (%.1f MiB, %s matrices as served)\n", model->weight_bytes,
               (double)model->weight_bytes / (1024.0 * 1024.0), ym_wtype_name(model->wtype));
        printf("file bytes        %zu (%.1f MiB, tensors on disk)\n", model->file_bytes,
               (double)model->file_bytes / (1024.0 * 1024.0));
        printf("state bytes       %zu per sequence (%.1f KiB)\n", ym_config_state_bytes(cfg),
               (double)ym_config_state_bytes(cfg) / 1024.0);
        printf("vocab (model)     %d\n", cfg->n_vocab);
        if (tok != NULL) {
            printf("vocab (tokenizer) %d\n", ym_tok_n_vocab(tok));
            printf("eos id            %d\n", ym_tok_eos_id(tok));
        } else {
            printf("tokenizer         none (%s)\n", diag.msg[0] ? diag.msg : ym_strerror(tok_err));
            printf("eos id            %d (config)\n", cfg->eos_id);
        }
        printf("blas core         %s (the OpenBLAS kernel this process runs)\n", ym_blas_core());
        if (sparsity != NULL) {
            double all_ch = (double)cfg->n_layer * cfg->d_inner;
            printf("sparsity          %s (method %s)\n", sparsity, method);
            printf("  channels kept   %lld of %.0f (%.1f%%)\n", (long long)model->n_channels_kept,
                   all_ch, 100.0 * (double)model->n_channels_kept / all_ch);
            printf("  states live     %lld of %.0f (%.1f%%); scan block fill %.1f%%\n",
                   (long long)model->n_states_live, all_ch * cfg->d_state,
                   100.0 * (double)model->n_states_live / (all_ch * cfg->d_state),
                   model->n_scan_lanes > 0
                       ? 100.0 * (double)model->n_states_live / (double)model->n_scan_lanes
                       : 100.0);
            for (int l = 0; l < cfg->n_layer; l++) {
                const ym_layer *L = &model->layers[l];
                printf("  layer %-3d       %d channels, %lld live states, %lld scan lanes\n", l,
                       L->d_inner, (long long)(L->scan ? L->scan->n_live : 0),
                       (long long)(L->scan ? L->scan->n_lanes : 0));
            }
        }
    }
    if (fflush(stdout) != 0)
        rc = cli_error(CLI_FAIL, "inspect: cannot write the output");
    json_decref(o);
    ym_tok_free(tok);
    ym_model_unref(model);
    return rc;
}
