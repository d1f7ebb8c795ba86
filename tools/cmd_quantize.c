/* tools/cmd_quantize.c - `yunmin quantize`: a model directory rewritten with its matrices in
 * another type (int8 with per-row scales, bf16 or f32), so that it loads without converting.
 *
 * Owns: the output directory's model.safetensors (one file, written atomically by ym_st_write)
 * and the copies of config.json and the tokenizer files beside it. The model is loaded with
 * its matrices in the target type (engine/model.h does the conversion, the same one a
 * `--weights` load does, so a quantized checkpoint serves exactly what `--weights int8`
 * serves); every other tensor is copied byte for byte from the input. Format: docs/FORMATS.md.
 * Must not: write into the input directory (DIR and --out must differ). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/weight.h"
#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin quantize [--model DIR] --out DIR [--weights int8|bf16|f32]\n"
               "Writes DIR/model.safetensors with the matrices (embedding, in_proj, x_proj,\n"
               "out_proj, lm_head) in the given type (default int8: symmetric, one f32 scale\n"
               "per output row, tensor NAME_scale), the other tensors as they were, and copies\n"
               "config.json and the tokenizer files. Loads with the type it was written in.\n");
}

/* Copy src/name to dst/name when it exists; 0, or CLI_FAIL with the error printed. */
static int copy_file(const char *src, const char *dst, const char *name)
{
    char in[4096], out[4096];
    snprintf(in, sizeof(in), "%s/%s", src, name);
    snprintf(out, sizeof(out), "%s/%s", dst, name);
    FILE *fi = fopen(in, "rb");
    if (fi == NULL)
        return errno == ENOENT ? 0 : cli_error(CLI_FAIL, "quantize: cannot read %s", name);
    FILE *fo = fopen(out, "wb");
    int rc = 0;
    if (fo == NULL) {
        fclose(fi);
        return cli_error(CLI_FAIL, "quantize: cannot write %s in the output directory", name);
    }
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), fi)) > 0)
        if (fwrite(buf, 1, n, fo) != n) {
            rc = cli_error(CLI_FAIL, "quantize: cannot write %s in the output directory", name);
            break;
        }
    fclose(fi);
    if (fclose(fo) != 0 && rc == 0)
        rc = cli_error(CLI_FAIL, "quantize: cannot write %s in the output directory", name);
    return rc;
}

typedef struct outlist {
    ym_st_wtensor *t;
    int n, cap;
    char **names; /* owned names of the scale tensors */
    int n_names;
} outlist;

static ym_st_wtensor *add(outlist *o)
{
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 64;
        ym_st_wtensor *t = realloc(o->t, sizeof(*t) * (size_t)cap);
        char **nm = realloc(o->names, sizeof(*nm) * (size_t)cap);
        if (t == NULL || nm == NULL) {
            free(t != o->t ? t : NULL);
            if (nm != NULL)
                o->names = nm;
            return NULL;
        }
        o->t = t;
        o->names = nm;
        o->cap = cap;
    }
    ym_st_wtensor *w = &o->t[o->n++];
    memset(w, 0, sizeof(*w));
    return w;
}

/* The matrix name (its weight) -> one or two output tensors in w's type. */
static int add_weight(outlist *o, const char *name, const ym_weight *w)
{
    static const ym_dtype dt[] = {YM_DT_F32, YM_DT_BF16, YM_DT_I8};
    ym_st_wtensor *t = add(o);
    if (t == NULL)
        return -1;
    t->name = name;
    t->dtype = dt[w->type];
    t->n_dim = 2;
    t->shape[0] = w->n_rows;
    t->shape[1] = w->n_cols;
    t->data = w->data;
    if (w->type != YM_WT_INT8)
        return 0;
    size_t len = strlen(name) + sizeof("_scale");
    char *sn = malloc(len);
    if (sn == NULL || (t = add(o)) == NULL) {
        free(sn);
        return -1;
    }
    snprintf(sn, len, "%s_scale", name);
    o->names[o->n_names++] = sn;
    t->name = sn;
    t->dtype = YM_DT_F32;
    t->n_dim = 1;
    t->shape[0] = w->n_rows;
    t->data = w->scale;
    return 0;
}

/* The served weight for a checkpoint tensor name, or NULL when it is not a matrix. */
static const ym_weight *weight_of(const ym_model_t *m, const char *name)
{
    int l, off = 0;
    if (strcmp(name, "backbone.embeddings.weight") == 0 ||
        strcmp(name, "backbone.embedding.weight") == 0)
        return &m->embed;
    if (strcmp(name, "lm_head.weight") == 0)
        return &m->lm_head;
    if (sscanf(name, "backbone.layers.%d.%n", &l, &off) != 1 || off == 0 || l < 0 ||
        l >= m->cfg.n_layer)
        return NULL;
    const ym_layer *L = &m->layers[l];
    if (strcmp(name + off, "mixer.in_proj.weight") == 0)
        return &L->in_proj;
    if (strcmp(name + off, "mixer.x_proj.weight") == 0)
        return &L->x_proj;
    if (strcmp(name + off, "mixer.out_proj.weight") == 0)
        return &L->out_proj;
    return NULL;
}

int ym_cmd_quantize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"out", required_argument, NULL, 'o'},
        {"weights", required_argument, NULL, 'W'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *out_dir = NULL, *weights = "int8";
    ym_wtype wt = YM_WT_INT8;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_arg = optarg;
            break;
        case 'o':
            out_dir = optarg;
            break;
        case 'W':
            if (cli_parse_weights(optarg, &wt) != 0)
                return CLI_USAGE;
            if (wt == YM_WT_AUTO)
                return cli_error(CLI_USAGE, "quantize: --weights must be int8, bf16 or f32");
            weights = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("quantize", argv, c);
        }
    }
    if (optind < argc)
        return cli_extra_arg("quantize", argv[optind]);
    if (out_dir == NULL)
        return cli_error(CLI_USAGE, "quantize: --out is required");
    const char *dir = cli_model_dir(model_arg);
    if (cli_is_synthetic(dir))
        return cli_error(CLI_USAGE, "quantize: give a model directory, not a synthetic model");
    struct stat si, so;
    if (stat(dir, &si) == 0 && stat(out_dir, &so) == 0 && si.st_dev == so.st_dev &&
        si.st_ino == so.st_ino)
        return cli_error(CLI_USAGE, "quantize: --out must differ from the model directory");

    ym_model_t *m = NULL;
    outlist o = {0};
    int rc = cli_load_model_as(dir, weights, &m);
    if (rc != 0)
        return rc;
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        rc = cli_error(CLI_FAIL, "quantize: cannot create the output directory: %s",
                       strerror(errno));
        goto out;
    }
    /* Every tensor of the input in its order: matrices from the model in the target type,
     * the rest as stored (a tied model's redundant lm_head is left out). */
    const ym_st_set_t *st = (const ym_st_set_t *)m->st;
    for (int i = 0; i < ym_st_set_n_tensors(st); i++) {
        const ym_st_tensor *t = ym_st_set_tensor(st, i);
        size_t nl = strlen(t->name);
        if (nl > 6 && strcmp(t->name + nl - 6, "_scale") == 0)
            continue; /* an input's int8 scales: rewritten with their matrix */
        const ym_weight *w = weight_of(m, t->name);
        if (w != NULL && strcmp(t->name, "lm_head.weight") == 0 && m->cfg.tie_embeddings)
            continue;
        if (w != NULL) {
            if (add_weight(&o, t->name, w) != 0) {
                rc = cli_error(CLI_FAIL, "quantize: out of memory");
                goto out;
            }
            continue;
        }
        ym_st_wtensor *x = add(&o);
        if (x == NULL) {
            rc = cli_error(CLI_FAIL, "quantize: out of memory");
            goto out;
        }
        x->name = t->name;
        x->dtype = t->dtype;
        x->n_dim = t->n_dim;
        memcpy(x->shape, t->shape, sizeof(x->shape));
        x->data = t->data;
    }
    const ym_st_meta meta[] = {{"format", "pt"}, {"yunmin.weights", (char *)ym_wtype_name(wt)}};
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors", out_dir);
    ym_diag diag = {0};
    ym_err err = ym_st_write(path, o.t, o.n, meta, 2, &diag);
    if (err != YM_OK) {
        rc = cli_error(CLI_FAIL, "quantize: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
        goto out;
    }
    static const char *files[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]) && rc == 0; i++)
        rc = copy_file(dir, out_dir, files[i]);
    if (rc == 0)
        fprintf(stderr, "quantize: %s -> %s: %s matrices, %.1f MB of weights\n", dir, out_dir,
                ym_wtype_name(wt), (double)m->resident_bytes / 1e6);
out:
    for (int i = 0; i < o.n_names; i++)
        free(o.names[i]);
    free(o.names);
    free(o.t);
    ym_model_unref(m);
    return rc;
}
