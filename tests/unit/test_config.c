/* tests/unit/test_config.c - config.json in transformers' and state-spaces' forms. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/config.h"
#include "testutil.h"

static ym_err parse(const char *json, ym_config *c, ym_diag *diag)
{
    memset(diag, 0, sizeof(*diag));
    return ym_config_parse(json, strlen(json), c, diag);
}

static ym_config parse_ok(const char *json)
{
    ym_config c;
    ym_diag diag;
    ym_err err = parse(json, &c, &diag);
    ck_assert_msg(err == YM_OK, "%s: %s", json, diag.msg);
    return c;
}

/* Every field but the form flag. */
static void assert_same_model(const ym_config *a, const ym_config *b)
{
    ck_assert_int_eq(a->d_model, b->d_model);
    ck_assert_int_eq(a->n_layer, b->n_layer);
    ck_assert_int_eq(a->d_inner, b->d_inner);
    ck_assert_int_eq(a->d_state, b->d_state);
    ck_assert_int_eq(a->d_conv, b->d_conv);
    ck_assert_int_eq(a->dt_rank, b->dt_rank);
    ck_assert_int_eq(a->n_vocab, b->n_vocab);
    ck_assert_int_eq(a->use_bias, b->use_bias);
    ck_assert_int_eq(a->use_conv_bias, b->use_conv_bias);
    ck_assert_int_eq(a->tie_embeddings, b->tie_embeddings);
    ck_assert(a->norm_eps == b->norm_eps);
    ck_assert_int_eq(a->residual_in_fp32, b->residual_in_fp32);
    ck_assert_int_eq(a->bos_id, b->bos_id);
    ck_assert_int_eq(a->eos_id, b->eos_id);
    ck_assert_int_eq(a->pad_id, b->pad_id);
}

/* The shape of mamba-130m as each library saves it (state-spaces pads 50277 to 50280). */
static const char *hf_130m =
    "{\"architectures\":[\"MambaForCausalLM\"],\"model_type\":\"mamba\",\"hidden_size\":768,"
    "\"num_hidden_layers\":24,\"vocab_size\":50280,\"state_size\":16,\"expand\":2,"
    "\"intermediate_size\":1536,\"conv_kernel\":4,\"time_step_rank\":48,\"use_bias\":false,"
    "\"use_conv_bias\":true,\"layer_norm_epsilon\":1e-05,\"tie_word_embeddings\":true,"
    "\"residual_in_fp32\":true,\"hidden_act\":\"silu\",\"initializer_range\":0.1,"
    "\"time_step_init_scheme\":\"random\",\"time_step_max\":0.1,\"time_step_min\":0.001,"
    "\"torch_dtype\":\"float32\",\"dtype\":\"float32\",\"transformers_version\":\"4.39.0\","
    "\"use_cache\":true,\"rescale_prenorm_residual\":false,\"use_mambapy\":false}";
static const char *ss_130m =
    "{\"d_model\":768,\"n_layer\":24,\"vocab_size\":50277,\"ssm_cfg\":{},\"rms_norm\":true,"
    "\"residual_in_fp32\":true,\"fused_add_norm\":true,\"pad_vocab_size_multiple\":8}";

START_TEST(test_config_both_forms_give_the_same_model)
{
    ym_config a = parse_ok(hf_130m), b = parse_ok(ss_130m);
    assert_same_model(&a, &b);
    ck_assert(!a.state_spaces);
    ck_assert(b.state_spaces);
    ck_assert_int_eq(a.d_inner, 2 * a.d_model);

    /* Non-default values through both key sets. */
    ym_config c = parse_ok("{\"hidden_size\":40,\"num_hidden_layers\":3,\"vocab_size\":100,"
                           "\"state_size\":8,\"expand\":3,\"conv_kernel\":2,\"time_step_rank\":5,"
                           "\"use_bias\":true,\"use_conv_bias\":false,\"layer_norm_epsilon\":1e-6,"
                           "\"tie_word_embeddings\":false,\"residual_in_fp32\":false}");
    ym_config d = parse_ok("{\"d_model\":40,\"n_layer\":3,\"vocab_size\":100,"
                           "\"pad_vocab_size_multiple\":4,\"ssm_cfg\":{\"d_state\":8,\"expand\":3,"
                           "\"d_conv\":2,\"dt_rank\":5,\"bias\":true,\"conv_bias\":false,"
                           "\"layer\":\"Mamba1\",\"dt_min\":0.001},\"norm_epsilon\":1e-6,"
                           "\"tie_embeddings\":false,\"residual_in_fp32\":false}");
    assert_same_model(&c, &d);
    ck_assert_int_eq(c.d_inner, 3 * 40);
}
END_TEST

START_TEST(test_config_transformers_keys_win_when_both_forms_are_present)
{
    /* Converted "-hf" checkpoints keep the state-spaces keys beside transformers' own; the
     * transformers model reads only its keys. Here the two sets disagree on purpose. */
    ym_config a = parse_ok("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10,"
                           "\"state_size\":8,\"d_model\":32,\"n_layer\":5,\"d_inner\":64,"
                           "\"ssm_cfg\":{},\"rms_norm\":true,\"fused_add_norm\":true,"
                           "\"pad_vocab_size_multiple\":8}");
    ym_config b = parse_ok("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10,"
                           "\"state_size\":8}");
    assert_same_model(&a, &b);
    ck_assert(!a.state_spaces);
}
END_TEST

START_TEST(test_config_defaults_are_the_writers_defaults)
{
    /* Omitted keys read as transformers' MambaConfig.__init__ defaults ... */
    ym_config a = parse_ok("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10}");
    ym_config b = parse_ok("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10,"
                           "\"state_size\":16,\"expand\":2,\"conv_kernel\":4,"
                           "\"time_step_rank\":\"auto\",\"use_bias\":false,\"use_conv_bias\":true,"
                           "\"layer_norm_epsilon\":1e-5,\"tie_word_embeddings\":true,"
                           "\"residual_in_fp32\":true}");
    assert_same_model(&a, &b);
    ck_assert_int_eq(a.bos_id, -1);
    ck_assert_int_eq(a.eos_id, -1);
    ck_assert_int_eq(a.pad_id, -1);
    /* ... and as mamba_ssm's MambaConfig / Mamba mixer defaults. */
    ym_config c = parse_ok("{\"d_model\":64,\"n_layer\":2,\"vocab_size\":10}");
    ym_config d = parse_ok("{\"d_model\":64,\"n_layer\":2,\"vocab_size\":10,"
                           "\"pad_vocab_size_multiple\":8,\"rms_norm\":true,"
                           "\"tie_embeddings\":true,\"ssm_cfg\":{\"d_state\":16,\"d_conv\":4,"
                           "\"expand\":2,\"dt_rank\":\"auto\",\"bias\":false,"
                           "\"conv_bias\":true}}");
    assert_same_model(&c, &d);
    ck_assert_int_eq(c.n_vocab, 16); /* 10 rounded up to the multiple of 8 */
    ck_assert_int_eq(parse_ok("{\"d_model\":64,\"n_layer\":2,\"vocab_size\":10,"
                              "\"pad_vocab_size_multiple\":1}")
                         .n_vocab,
                     10);
}
END_TEST

START_TEST(test_config_auto_dt_rank_is_ceil_of_d_model_over_16)
{
    const int sizes[] = { 1, 15, 16, 17, 100, 768, 2560 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char a[256], b[256], c[256];
        int want = (int)ceil(sizes[i] / 16.0);
        snprintf(a, sizeof(a),
                 "{\"hidden_size\":%d,\"num_hidden_layers\":1,\"vocab_size\":8,"
                 "\"time_step_rank\":\"auto\"}",
                 sizes[i]);
        snprintf(b, sizeof(b), "{\"d_model\":%d,\"n_layer\":1,\"vocab_size\":8}", sizes[i]);
        snprintf(c, sizeof(c),
                 "{\"hidden_size\":%d,\"num_hidden_layers\":1,\"vocab_size\":8,"
                 "\"time_step_rank\":%d}",
                 sizes[i], want);
        ck_assert_int_eq(parse_ok(a).dt_rank, want);
        ck_assert_int_eq(parse_ok(b).dt_rank, want);
        ck_assert_int_eq(parse_ok(c).dt_rank, want);
    }
}
END_TEST

START_TEST(test_config_intermediate_size_wins_over_expand)
{
    ym_config a = parse_ok("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10,"
                           "\"expand\":2,\"intermediate_size\":100}");
    ck_assert_int_eq(a.d_inner, 100);
    ym_config b = parse_ok("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10,"
                           "\"expand\":3}");
    ck_assert_int_eq(b.d_inner, 3 * 64);
}
END_TEST

START_TEST(test_config_token_ids)
{
    ym_config a = parse_ok("{\"hidden_size\":8,\"num_hidden_layers\":1,\"vocab_size\":10,"
                           "\"bos_token_id\":0,\"eos_token_id\":[2,3],\"pad_token_id\":null}");
    ck_assert_int_eq(a.bos_id, 0);
    ck_assert_int_eq(a.eos_id, 2);
    ck_assert_int_eq(a.pad_id, -1);
}
END_TEST

static void expect_bad(const char *json, const char *key)
{
    ym_config c;
    ym_diag diag;
    c.d_model = 123;
    ym_err err = parse(json, &c, &diag);
    ck_assert_msg(err == YM_EFORMAT, "%s: got %d", json, err);
    ck_assert_msg(strstr(diag.msg, key) != NULL, "%s: message '%s' lacks '%s'", json, diag.msg,
                  key);
    ck_assert_int_eq(c.d_model, 0); /* cleared on failure */
}

#define HF "\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":10"
#define SS "\"d_model\":64,\"n_layer\":2,\"vocab_size\":10"

START_TEST(test_config_rejects_missing_and_mistyped_keys_naming_them)
{
    expect_bad("{\"num_hidden_layers\":2,\"vocab_size\":10}", "hidden_size");
    expect_bad("{\"hidden_size\":64,\"vocab_size\":10}", "num_hidden_layers");
    expect_bad("{\"hidden_size\":64,\"num_hidden_layers\":2}", "vocab_size");
    expect_bad("{\"d_model\":64,\"vocab_size\":10}", "n_layer");
    expect_bad("{\"d_model\":64,\"n_layer\":2}", "vocab_size");
    expect_bad("{\"ssm_cfg\":{},\"n_layer\":2,\"vocab_size\":10}", "d_model");
    expect_bad("{\"n_layer\":2,\"vocab_size\":10}", "hidden_size");
    static const struct {
        const char *extra, *key;
    } hf[] = {
        { "\"state_size\":16.5", "state_size" },
        { "\"state_size\":\"16\"", "state_size" },
        { "\"state_size\":0", "state_size" },
        { "\"state_size\":1025", "state_size" },
        { "\"conv_kernel\":65", "conv_kernel" },
        { "\"conv_kernel\":null", "conv_kernel" },
        { "\"expand\":0", "expand" },
        { "\"expand\":2.5", "expand" },
        { "\"intermediate_size\":0", "intermediate_size" },
        { "\"intermediate_size\":300000", "intermediate_size" },
        { "\"time_step_rank\":\"big\"", "time_step_rank" },
        { "\"time_step_rank\":0", "time_step_rank" },
        { "\"time_step_rank\":-3", "time_step_rank" },
        { "\"time_step_rank\":true", "time_step_rank" },
        { "\"use_bias\":1", "use_bias" },
        { "\"use_conv_bias\":\"true\"", "use_conv_bias" },
        { "\"tie_word_embeddings\":null", "tie_word_embeddings" },
        { "\"residual_in_fp32\":0", "residual_in_fp32" },
        { "\"layer_norm_epsilon\":\"1e-5\"", "layer_norm_epsilon" },
        { "\"layer_norm_epsilon\":0", "layer_norm_epsilon" },
        { "\"layer_norm_epsilon\":-1e-5", "layer_norm_epsilon" },
        { "\"layer_norm_epsilon\":2", "layer_norm_epsilon" },
        { "\"eos_token_id\":\"0\"", "eos_token_id" },
        { "\"bos_token_id\":-1", "bos_token_id" },
        { "\"pad_token_id\":[\"x\"]", "pad_token_id" },
        { "\"hidden_act\":\"gelu\"", "hidden_act" },
        { "\"model_type\":\"jamba\"", "model_type" },
        { "\"model_type\":\"mamba\",\"n_groups\":8", "model_type" },
        { "\"model_type\":7", "model_type" },
        { "\"rms_norm\":\"yes\"", "rms_norm" },
    };
    char buf[512];
    for (size_t i = 0; i < sizeof(hf) / sizeof(hf[0]); i++) {
        snprintf(buf, sizeof(buf), "{" HF ",%s}", hf[i].extra);
        expect_bad(buf, hf[i].key);
    }
    /* Sizes out of range, both forms. */
    expect_bad("{\"hidden_size\":0,\"num_hidden_layers\":2,\"vocab_size\":10}", "hidden_size");
    expect_bad("{\"hidden_size\":65537,\"num_hidden_layers\":2,\"vocab_size\":10}",
               "hidden_size");
    expect_bad("{\"hidden_size\":-64,\"num_hidden_layers\":2,\"vocab_size\":10}", "hidden_size");
    expect_bad("{\"hidden_size\":64,\"num_hidden_layers\":1025,\"vocab_size\":10}",
               "num_hidden_layers");
    expect_bad("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":0}", "vocab_size");
    expect_bad("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":4194305}",
               "vocab_size");
    expect_bad("{\"hidden_size\":64,\"num_hidden_layers\":2,\"vocab_size\":1e3}", "vocab_size");
    expect_bad("{\"d_model\":65536,\"n_layer\":2,\"vocab_size\":10,\"ssm_cfg\":{\"expand\":8}}",
               "ssm_cfg.expand");
    expect_bad("{\"hidden_size\":65536,\"num_hidden_layers\":2,\"vocab_size\":10,\"expand\":8}",
               "intermediate_size");
    expect_bad("{\"d_model\":64,\"n_layer\":2,\"vocab_size\":4194300,"
               "\"pad_vocab_size_multiple\":1000}",
               "vocab_size");
    static const struct {
        const char *extra, *key;
    } ss[] = {
        { "\"ssm_cfg\":[]", "ssm_cfg" },
        { "\"ssm_cfg\":{\"d_state\":\"16\"}", "ssm_cfg.d_state" },
        { "\"ssm_cfg\":{\"d_conv\":0}", "ssm_cfg.d_conv" },
        { "\"ssm_cfg\":{\"expand\":-2}", "ssm_cfg.expand" },
        { "\"ssm_cfg\":{\"dt_rank\":\"x\"}", "ssm_cfg.dt_rank" },
        { "\"ssm_cfg\":{\"bias\":0}", "ssm_cfg.bias" },
        { "\"ssm_cfg\":{\"conv_bias\":null}", "ssm_cfg.conv_bias" },
        { "\"ssm_cfg\":{\"layer\":\"Mamba3\"}", "ssm_cfg.layer" },
        { "\"pad_vocab_size_multiple\":0", "pad_vocab_size_multiple" },
        { "\"tie_embeddings\":\"no\"", "tie_embeddings" },
        { "\"fused_add_norm\":1", "fused_add_norm" },
        { "\"norm_epsilon\":\"x\"", "norm_epsilon" },
        { "\"d_intermediate\":128", "d_intermediate" },
        { "\"attn_layer_idx\":[1]", "attn_layer_idx" },
    };
    for (size_t i = 0; i < sizeof(ss) / sizeof(ss[0]); i++) {
        snprintf(buf, sizeof(buf), "{" SS ",%s}", ss[i].extra);
        expect_bad(buf, ss[i].key);
    }
    /* Zero-valued hybrid keys as mamba_ssm writes them are fine. */
    parse_ok("{" SS ",\"d_intermediate\":0,\"attn_layer_idx\":[],\"attn_cfg\":{}}");
    expect_bad("", "JSON");
    expect_bad("{\"hidden_size\":", "JSON");
    expect_bad("[1]", "JSON");
    expect_bad("{" HF "," HF "}", "hidden_size"); /* duplicate keys */
}
END_TEST

START_TEST(test_config_rejects_layernorm)
{
    expect_bad("{" SS ",\"rms_norm\":false}", "rms_norm");
    expect_bad("{" HF ",\"rms_norm\":false}", "rms_norm");
}
END_TEST

/* mamba2-130m as transformers writes it (the converted checkpoint's keys) and as mamba_ssm
 * does (state-spaces/mamba2-130m's config.json). */
static const char *hf_m2_130m =
    "{\"architectures\":[\"Mamba2ForCausalLM\"],\"model_type\":\"mamba2\",\"hidden_size\":768,"
    "\"num_hidden_layers\":24,\"vocab_size\":50288,\"num_heads\":24,\"head_dim\":64,"
    "\"n_groups\":1,\"state_size\":128,\"expand\":2,\"conv_kernel\":4,\"chunk_size\":256,"
    "\"use_bias\":false,\"use_conv_bias\":true,\"rms_norm\":true,\"layer_norm_epsilon\":1e-05,"
    "\"time_step_limit\":[0.0,{\"__float__\":\"Infinity\"}],\"time_step_rank\":48,"
    "\"tie_word_embeddings\":true,\"residual_in_fp32\":true,\"hidden_act\":\"silu\","
    "\"bos_token_id\":0,\"eos_token_id\":0,\"pad_token_id\":0}";
static const char *ss_m2_130m =
    "{\"d_model\":768,\"d_intermediate\":0,\"n_layer\":24,\"vocab_size\":50277,"
    "\"ssm_cfg\":{\"layer\":\"Mamba2\"},\"attn_layer_idx\":[],\"attn_cfg\":{},\"rms_norm\":true,"
    "\"residual_in_fp32\":true,\"fused_add_norm\":true,\"pad_vocab_size_multiple\":16,"
    "\"tie_embeddings\":true}";

START_TEST(test_config_mamba2_both_forms)
{
    ym_config a = parse_ok(hf_m2_130m), b = parse_ok(ss_m2_130m);
    for (int i = 0; i < 2; i++) {
        const ym_config *c = i == 0 ? &a : &b;
        ck_assert_int_eq(c->arch, YM_ARCH_MAMBA2);
        ck_assert_str_eq(ym_arch_name(c->arch), "mamba2");
        ck_assert_int_eq(c->d_model, 768);
        ck_assert_int_eq(c->n_layer, 24);
        ck_assert_int_eq(c->d_inner, 1536);
        ck_assert_int_eq(c->n_head, 24);
        ck_assert_int_eq(c->head_dim, 64);
        ck_assert_int_eq(c->n_group, 1);
        ck_assert_int_eq(c->d_state, 128);
        ck_assert_int_eq(c->d_conv, 4);
        ck_assert_int_eq(c->chunk_size, 256);
        ck_assert_int_eq(c->n_vocab, 50288); /* 50277 padded to a multiple of 16 */
        ck_assert(c->tie_embeddings && !c->use_bias && c->use_conv_bias);
        ck_assert(c->dt_min == 0.0f && isinf(c->dt_max));
        ck_assert(c->gated_norm_eps == 1e-5f && c->norm_eps == 1e-5f);
        ck_assert_int_eq(c->dt_rank, 0);
        ck_assert_uint_eq(ym_config_state_bytes(c), 19390464); /* 18.49 MiB */
    }
    ck_assert(!a.state_spaces && b.state_spaces);
    /* embedding + 24 x (norm, in_proj 3352 x 768, conv 1792 x 4 + bias, 3 x 24, norm 1536,
     * out_proj) + norm_f */
    size_t layer = 768 + 3352 * 768 + 1792 * 5 + 72 + 1536 + 768 * 1536;
    ck_assert_uint_eq(ym_config_n_params(&a), 50288 * 768 + 24 * layer + 768);
}
END_TEST

START_TEST(test_config_mamba2_defaults_and_values)
{
    /* Mamba2Config's defaults: 128 heads of 64, 8 groups, state 128, untied */
    ym_config c = parse_ok("{\"model_type\":\"mamba2\",\"hidden_size\":4096,"
                           "\"num_hidden_layers\":2,\"vocab_size\":10}");
    ck_assert_int_eq(c.n_head, 128);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert_int_eq(c.n_group, 8);
    ck_assert_int_eq(c.d_state, 128);
    ck_assert_int_eq(c.chunk_size, 256);
    ck_assert(!c.tie_embeddings);
    ck_assert(c.dt_min == 0.0f && isinf(c.dt_max));
    c = parse_ok("{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
                 "\"n_groups\":2,\"time_step_limit\":[0.001,0.5],\"layer_norm_epsilon\":1e-6,"
                 "\"use_bias\":true,\"chunk_size\":7}");
    ck_assert(c.dt_min == 0.001f && c.dt_max == 0.5f);
    ck_assert(c.gated_norm_eps == 1e-6f && c.use_bias);
    ck_assert_int_eq(c.n_group, 2);
    ck_assert_int_eq(c.chunk_size, 7);
    /* without model_type, Mamba-2's keys decide */
    c = parse_ok("{" HF ",\"num_heads\":2,\"head_dim\":64,\"n_groups\":1}");
    ck_assert_int_eq(c.arch, YM_ARCH_MAMBA2);
    c = parse_ok("{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"headdim\":32,\"ngroups\":2,"
                 "\"d_state\":16,\"chunk_size\":64,\"bias\":true,\"dt_limit\":[0.0,0.25]},"
                 "\"norm_epsilon\":1e-6}");
    ck_assert_int_eq(c.n_head, 4);
    ck_assert_int_eq(c.n_group, 2);
    ck_assert(c.norm_eps == 1e-6f && c.gated_norm_eps == 1e-5f && c.dt_max == 0.25f);
    ck_assert(c.use_bias && c.tie_embeddings);
}
END_TEST

#define M2 "\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"n_groups\":2"

START_TEST(test_config_mamba2_rejects_bad_values_naming_the_key)
{
    static const struct {
        const char *json, *key;
    } bad[] = {
        { "{" M2 ",\"num_heads\":0}", "num_heads" }, /* duplicate key: the JSON is refused */
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":7,\"head_dim\":16}", "num_heads" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":0}", "num_heads" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"n_groups\":3}",
          "n_groups" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"n_groups\":0}",
          "n_groups" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":\"16\"}", "head_dim" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"chunk_size\":0}",
          "chunk_size" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"time_step_limit\":[0.0]}",
          "time_step_limit" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"time_step_limit\":[0.5,0.1]}",
          "time_step_limit" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"time_step_limit\":[-1,1]}",
          "time_step_limit" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"time_step_limit\":[0,{\"__float__\":\"NaN\"}]}",
          "time_step_limit" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"time_step_limit\":\"inf\"}",
          "time_step_limit" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"state_size\":0}",
          "state_size" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"use_bias\":1}",
          "use_bias" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"layer_norm_epsilon\":0}",
          "layer_norm_epsilon" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,\"expand\":0}",
          "expand" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"rms_norm\":false}",
          "rms_norm" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"attn_layer_idx\":[3]}",
          "attn_layer_idx" },
        { "{\"model_type\":\"mamba2\"," HF ",\"num_heads\":8,\"head_dim\":16,"
          "\"d_intermediate\":256}",
          "d_intermediate" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"headdim\":48}}", "ssm_cfg.headdim" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"headdim\":16,\"ngroups\":3}}",
          "ssm_cfg.ngroups" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"d_ssm\":64}}", "ssm_cfg.d_ssm" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"rmsnorm\":false}}", "ssm_cfg.rmsnorm" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"norm_before_gate\":true}}",
          "ssm_cfg.norm_before_gate" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"D_has_hdim\":true}}",
          "ssm_cfg.D_has_hdim" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"dt_limit\":[1,0]}}", "ssm_cfg.dt_limit" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\",\"chunk_size\":-1}}", "ssm_cfg.chunk_size" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\"},\"attn_layer_idx\":[1,3]}",
          "attn_layer_idx" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\"},\"d_intermediate\":3072}",
          "d_intermediate" },
        { "{\"model_type\":\"mamba\"," SS ",\"ssm_cfg\":{\"layer\":\"Mamba2\"}}", "model_type" },
        { "{" SS ",\"ssm_cfg\":{\"layer\":\"Mamba3\"}}", "ssm_cfg.layer" },
    };
    expect_bad(bad[0].json, "JSON"); /* duplicate keys */
    for (size_t i = 1; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_bad(bad[i].json, bad[i].key);
}
END_TEST

START_TEST(test_config_falcon_mamba)
{
    ym_config c = parse_ok("{\"model_type\":\"falcon_mamba\"," HF ",\"state_size\":16,"
                           "\"time_step_rank\":4,\"mixer_rms_eps\":1e-3}");
    ck_assert_int_eq(c.arch, YM_ARCH_FALCON_MAMBA);
    ck_assert_str_eq(ym_arch_name(c.arch), "falcon_mamba");
    ck_assert_int_eq(c.d_inner, 128);
    ck_assert_int_eq(c.dt_rank, 4);
    ck_assert(c.mixer_rms_eps == 1e-3f);
    ck_assert_int_eq(c.n_head, 0);
    c = parse_ok("{\"model_type\":\"falcon_mamba\"," HF "}");
    ck_assert(c.mixer_rms_eps == 1e-6f); /* FalconMambaConfig's default */
    ck_assert_uint_eq(ym_config_state_bytes(&c), 2 * 128 * (3 + 16) * 4);
    expect_bad("{\"model_type\":\"falcon_mamba\"," HF ",\"mixer_rms_eps\":0}", "mixer_rms_eps");
    expect_bad("{\"model_type\":\"falcon_mamba\"," HF ",\"mixer_rms_eps\":\"1e-6\"}",
               "mixer_rms_eps");
    expect_bad("{\"model_type\":\"falcon_mamba\"," HF ",\"n_groups\":2}", "model_type");
    expect_bad("{\"model_type\":\"falcon_mamba\"," SS "}", "hidden_size");
}
END_TEST

/* The configs transformers wrote for the Mamba-2 and Falcon-Mamba fixtures (and the raw
 * mamba_ssm one) parse to the shapes the fixture script built. */
START_TEST(test_config_reads_the_mamba2_and_falcon_fixtures)
{
    static const struct {
        const char *dir;
        ym_arch arch;
        int d_model, n_layer, n_head, head_dim, n_group, d_state, d_conv, chunk, n_vocab;
        float dt_max, mixer_eps;
    } want[] = {
        { "m2-g1-k4-f32", YM_ARCH_MAMBA2, 32, 2, 4, 16, 1, 16, 4, 8, 4112, INFINITY, 0 },
        { "m2-g2-bias-untied-k3-bf16", YM_ARCH_MAMBA2, 48, 2, 6, 16, 2, 8, 3, 5, 4099, 0.3f, 0 },
        { "m2-g3-odd-k2-f32", YM_ARCH_MAMBA2, 36, 3, 9, 8, 3, 5, 2, 6, 4099, INFINITY, 0 },
        { "ss-m2-g1-k4-f32", YM_ARCH_MAMBA2, 32, 2, 4, 16, 1, 16, 4, 8, 4112, INFINITY, 0 },
        { "fm-bias-k3-f32", YM_ARCH_FALCON_MAMBA, 40, 2, 0, 0, 0, 8, 3, 0, 4099, 0, 1e-6f },
        { "fm-untied-k4-bf16", YM_ARCH_FALCON_MAMBA, 32, 2, 0, 0, 0, 16, 4, 0, 4099, 0, 1e-3f },
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s/config.json", YM_FIXTURE("mamba2"), want[i].dir);
        FILE *f = fopen(path, "rb");
        ck_assert_msg(f != NULL, "%s missing", path);
        char buf[8192];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        ym_config c;
        ym_diag diag;
        memset(&diag, 0, sizeof(diag));
        ck_assert_msg(ym_config_parse(buf, n, &c, &diag) == YM_OK, "%s: %s", path, diag.msg);
        ck_assert_int_eq(c.arch, want[i].arch);
        ck_assert_int_eq(c.d_model, want[i].d_model);
        ck_assert_int_eq(c.n_layer, want[i].n_layer);
        ck_assert_int_eq(c.n_head, want[i].n_head);
        ck_assert_int_eq(c.head_dim, want[i].head_dim);
        ck_assert_int_eq(c.n_group, want[i].n_group);
        ck_assert_int_eq(c.d_state, want[i].d_state);
        ck_assert_int_eq(c.d_conv, want[i].d_conv);
        ck_assert_int_eq(c.chunk_size, want[i].chunk);
        ck_assert_int_eq(c.n_vocab, want[i].n_vocab);
        ck_assert(c.dt_max == want[i].dt_max);
        ck_assert(c.mixer_rms_eps == want[i].mixer_eps);
    }
}
END_TEST

/* The loader's entry point takes every family the forward runs. */
START_TEST(test_config_load_takes_every_family)
{
    const char *docs[] = { hf_m2_130m, ss_m2_130m, "{\"model_type\":\"falcon_mamba\"," HF "}" };
    const ym_arch want[] = { YM_ARCH_MAMBA2, YM_ARCH_MAMBA2, YM_ARCH_FALCON_MAMBA };
    for (int i = 0; i < 3; i++) {
        char path[] = "/tmp/ym-config-test-XXXXXX";
        int fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, docs[i], strlen(docs[i])), (ssize_t)strlen(docs[i]));
        close(fd);
        ym_config c;
        ym_diag diag = { { 0 }, { 0 } };
        ck_assert_msg(ym_config_load(path, &c, &diag) == YM_OK, "%s", diag.msg);
        unlink(path);
        ck_assert_int_eq(c.arch, want[i]);
    }
}
END_TEST

START_TEST(test_config_load_reads_a_file)
{
    char path[] = "/tmp/ym-config-test-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, ss_130m, strlen(ss_130m)), (ssize_t)strlen(ss_130m));
    close(fd);
    ym_config c;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_config_load(path, &c, &diag), YM_OK);
    ym_config want = parse_ok(ss_130m);
    assert_same_model(&c, &want);
    unlink(path);
    ck_assert_int_eq(ym_config_load(path, &c, &diag), YM_ENOENT);
    ck_assert_ptr_nonnull(strstr(diag.msg, path));
}
END_TEST

START_TEST(test_config_sizes_follow_the_dimensions)
{
    ym_config c = parse_ok(hf_130m);
    /* state: conv window (d_conv - 1) and ssm (d_state) floats per channel and layer. */
    ck_assert_uint_eq(ym_config_state_bytes(&c),
                      (size_t)c.n_layer * (size_t)c.d_inner * (size_t)(c.d_conv - 1 + c.d_state) *
                          sizeof(float));
    /* Untying adds exactly one more [n_vocab, d_model] table; biases add their vectors. */
    ym_config u = c;
    u.tie_embeddings = false;
    ck_assert_uint_eq(ym_config_n_params(&u) - ym_config_n_params(&c),
                      (size_t)c.n_vocab * (size_t)c.d_model);
    ym_config b = c;
    b.use_bias = true;
    ck_assert_uint_eq(ym_config_n_params(&b) - ym_config_n_params(&c),
                      (size_t)c.n_layer * (size_t)(2 * c.d_inner + c.d_model));
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_config_both_forms_give_the_same_model);
    tcase_add_test(tc, test_config_transformers_keys_win_when_both_forms_are_present);
    tcase_add_test(tc, test_config_defaults_are_the_writers_defaults);
    tcase_add_test(tc, test_config_auto_dt_rank_is_ceil_of_d_model_over_16);
    tcase_add_test(tc, test_config_intermediate_size_wins_over_expand);
    tcase_add_test(tc, test_config_token_ids);
    tcase_add_test(tc, test_config_rejects_missing_and_mistyped_keys_naming_them);
    tcase_add_test(tc, test_config_rejects_layernorm);
    tcase_add_test(tc, test_config_mamba2_both_forms);
    tcase_add_test(tc, test_config_mamba2_defaults_and_values);
    tcase_add_test(tc, test_config_mamba2_rejects_bad_values_naming_the_key);
    tcase_add_test(tc, test_config_falcon_mamba);
    tcase_add_test(tc, test_config_load_takes_every_family);
    tcase_add_test(tc, test_config_reads_the_mamba2_and_falcon_fixtures);
    tcase_add_test(tc, test_config_load_reads_a_file);
    tcase_add_test(tc, test_config_sizes_follow_the_dimensions);
    suite_add_tcase(s, tc);
    return s;
}
