/* test_model_config: HF config.json parsing, writing, tensor lists,
 * parameter counts and FLOPs (lib/model_config.h).
 *
 *   test_model_config FIXTURE_DIR SCRATCH_DIR   all checks; exit 1 on a failure
 *
 * Bad configs run in a child process, since the library fails the tool: the
 * child must exit 65 (66 for a missing file) with one line naming the field. */
#include "model_config.h"
#include "test_harness.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *fixtures, *scratch;

static void parse_text(const void *text)
{
    model_config c;
    mc_parse(&c, text, strlen(text), "cfg.json");
    mc_free(&c);
}

static void load_path(const void *path)
{
    model_config c;
    mc_load(&c, path);
    mc_free(&c);
}

static char *fixture(const char *name)
{
    size_t n = strlen(fixtures) + strlen(name) + 2;
    char *p = upc_malloc(n);
    snprintf(p, n, "%s/%s", fixtures, name);
    return p;
}

static const mc_tensor *find_tensor(const mc_tensor *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}

/* Removes the line `line` (with its newline) from text, in place; true if found. */
static bool drop_line(char *text, const char *line)
{
    char *p = strstr(text, line);
    if (!p)
        return false;
    memmove(p, p + strlen(line), strlen(p + strlen(line)) + 1);
    return true;
}

static void test_llama3(void)
{
    char *path = fixture("llama-3-8b.config.json");
    model_config c;
    mc_load(&c, path);
    CHECK(!c.moe);
    CHECK(c.vocab_size == 128256 && c.hidden_size == 4096 && c.intermediate_size == 14336);
    CHECK(c.num_hidden_layers == 32 && c.num_attention_heads == 32 && c.num_key_value_heads == 8);
    CHECK(c.head_dim == 128);
    CHECK(c.rms_norm_eps == 1e-5 && c.rope_theta == 500000.0 && c.max_position_embeddings == 8192);
    CHECK(!c.tie_word_embeddings && c.bos_token_id == 128000 && c.n_eos == 1 && c.eos_token_ids[0] == 128001);
    CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    CHECK(mc_unsupported(&c) == NULL);             /* rope_scaling null, attention_bias false */

    /* Parameters by hand: embed + head 2*V*d; per layer q,o d*d, k,v d*1024,
     * SwiGLU 3*d*f, two norms; final norm. Published: 8.03B. */
    int64_t d = 4096, f = 14336, V = 128256, L = 32, kv = 1024;
    int64_t layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d;
    int64_t total = 2 * V * d + L * layer + d;
    mc_params p = mc_param_count(&c);
    CHECK(p.total == total);
    CHECK(p.total == 8030261248LL);
    CHECK(fabs((double)p.total / 1e9 - 8.03) < 0.005);
    CHECK(p.active == p.total);
    CHECK(p.embedding == 2 * V * d);
    CHECK(p.active_matmul == total - V * d - L * 2 * d - d);

    double flops = mc_train_flops_per_token(&c, 8192);
    double want = 6.0 * (double)(total - V * d - L * 2 * d - d) + 12.0 * 32 * 32 * 128 * 8192;
    CHECK(flops == want);

    size_t n;
    mc_tensor *t = mc_tensors(&c, &n);
    CHECK(n == 1 + 32 * 9 + 2);
    CHECK(strcmp(t[0].name, "model.embed_tokens.weight") == 0 && t[0].shape[0] == V && t[0].shape[1] == d);
    const mc_tensor *k = find_tensor(t, n, "model.layers.31.self_attn.k_proj.weight");
    CHECK(k && k->ndim == 2 && k->shape[0] == 1024 && k->shape[1] == 4096 && k->layer == 31);
    const mc_tensor *down = find_tensor(t, n, "model.layers.0.mlp.down_proj.weight");
    CHECK(down && down->shape[0] == 4096 && down->shape[1] == 14336);
    const mc_tensor *norm = find_tensor(t, n, "model.layers.5.post_attention_layernorm.weight");
    CHECK(norm && norm->ndim == 1 && norm->shape[0] == 4096 && !norm->matmul);
    CHECK(strcmp(t[n - 1].name, "lm_head.weight") == 0 && strcmp(t[n - 2].name, "model.norm.weight") == 0);
    free(t);

    /* Written back in transformers' layout: the fixture plus head_dim. */
    char *text = mc_to_json(&c);
    size_t flen;
    char *orig = upc_read_file(path, &flen);
    CHECK(drop_line(text, "  \"head_dim\": 128,\n"));
    CHECK(strcmp(text, orig) == 0);
    if (strcmp(text, orig) != 0)
        fprintf(stderr, "--- written:\n%s--- fixture:\n%s", text, orig);
    free(text);
    free(orig);
    mc_free(&c);
    free(path);
}

static void test_mixtral(void)
{
    char *path = fixture("mixtral-8x7b.config.json");
    model_config c;
    mc_load(&c, path);
    CHECK(c.moe && c.num_local_experts == 8 && c.num_experts_per_tok == 2);
    CHECK(c.router_aux_loss_coef == 0.02 && c.rope_theta == 1e6 && c.vocab_size == 32000);
    CHECK(c.norm_topk_prob && !c.output_router_logits && c.router_jitter_noise == 0.0);
    CHECK(mc_unsupported(&c) == NULL);             /* sliding_window: null */
    for (int l = 0; l < 32; l++)
        CHECK(mc_layer_is_moe(&c, l));

    /* By hand: experts 8 x 3*d*f per layer plus a router E*d; published
     * 46.7B total, 12.9B active (top-2). */
    int64_t d = 4096, f = 14336, V = 32000, L = 32, E = 8;
    int64_t attn = 2 * d * d + 2 * d * 1024, norms = 2 * d;
    int64_t total = 2 * V * d + L * (attn + norms + E * d + E * 3 * d * f) + d;
    int64_t active = 2 * V * d + L * (attn + norms + E * d + 2 * 3 * d * f) + d;
    mc_params p = mc_param_count(&c);
    CHECK(p.total == total && p.active == active);
    CHECK(fabs((double)p.total / 1e9 - 46.7) < 0.05);
    CHECK(fabs((double)p.active / 1e9 - 12.9) < 0.05);

    size_t n;
    mc_tensor *t = mc_tensors(&c, &n);
    CHECK(n == 1 + 32 * (6 + 1 + 24) + 2);
    const mc_tensor *g = find_tensor(t, n, "model.layers.3.block_sparse_moe.gate.weight");
    CHECK(g && g->shape[0] == 8 && g->shape[1] == 4096 && g->matmul && g->expert == -1);
    const mc_tensor *w2 = find_tensor(t, n, "model.layers.3.block_sparse_moe.experts.7.w2.weight");
    CHECK(w2 && w2->shape[0] == 4096 && w2->shape[1] == 14336 && w2->expert == 7);
    const mc_tensor *w1 = find_tensor(t, n, "model.layers.0.block_sparse_moe.experts.0.w1.weight");
    CHECK(w1 && w1->shape[0] == 14336 && w1->shape[1] == 4096);
    CHECK(find_tensor(t, n, "model.layers.0.block_sparse_moe.experts.0.w3.weight") != NULL);
    CHECK(find_tensor(t, n, "model.layers.0.mlp.gate_proj.weight") == NULL);
    free(t);

    /* Nothing lost or changed on the way through: the written JSON equals the
     * fixture's once the keys upcyc adds are taken out. */
    char *text = mc_to_json(&c);
    json_t *ours = json_loads(text, 0, NULL), *orig = json_load_file(path, 0, NULL);
    CHECK(ours && orig);
    CHECK(json_object_get(json_object_get(ours, "upcyc"), "capacity_factor") != NULL);
    json_object_del(ours, "head_dim");
    json_object_del(ours, "norm_topk_prob");
    json_object_del(ours, "router_jitter_noise");
    json_object_del(ours, "upcyc");
    CHECK(json_equal(ours, orig));
    json_decref(ours);
    json_decref(orig);

    /* Parse what we wrote: the same config. */
    model_config c2;
    mc_parse(&c2, text, strlen(text), "written");
    char *text2 = mc_to_json(&c2);
    CHECK(strcmp(text, text2) == 0);
    free(text2);
    mc_free(&c2);
    free(text);
    mc_free(&c);
    free(path);
}

static void test_upcyc_and_defaults(void)
{
    /* An upcycled model: MoE in layers 1 and 3 only, tied embeddings, our own
     * settings and a key nobody knows yet. */
    const char *cfg =
        "{\"architectures\": [\"MixtralForCausalLM\"], \"vocab_size\": 1000, \"hidden_size\": 64,"
        " \"intermediate_size\": 160, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
        " \"num_key_value_heads\": 2, \"num_local_experts\": 4, \"num_experts_per_tok\": 2,"
        " \"tie_word_embeddings\": true, \"rms_norm_eps\": 1e-06, \"router_aux_loss_coef\": 0.01,"
        " \"eos_token_id\": [7, 9], \"bos_token_id\": null,"
        " \"upcyc\": {\"moe_layers\": [3, 1], \"router_z_loss_coef\": 0.001, \"capacity_factor\": 1.25,"
        "            \"router_order\": \"softmax_topk\"}}";
    model_config c;
    mc_parse(&c, cfg, strlen(cfg), "up.json");
    CHECK(c.moe && !mc_layer_is_moe(&c, 0) && mc_layer_is_moe(&c, 1) && !mc_layer_is_moe(&c, 2) &&
          mc_layer_is_moe(&c, 3));
    CHECK(c.router_z_loss_coef == 0.001 && c.capacity_factor == 1.25);
    CHECK(c.head_dim == 16 && c.bos_token_id == -1 && c.n_eos == 2 && c.eos_token_ids[1] == 9);
    CHECK(c.rope_theta == 1e6 && c.max_position_embeddings == 131072);   /* MixtralConfig defaults */
    size_t n;
    mc_tensor *t = mc_tensors(&c, &n);
    CHECK(n == 1 + 2 * (6 + 3) + 2 * (6 + 1 + 12) + 1);                 /* tied: no lm_head */
    CHECK(find_tensor(t, n, "model.layers.0.mlp.up_proj.weight") != NULL);
    CHECK(find_tensor(t, n, "model.layers.1.block_sparse_moe.experts.3.w3.weight") != NULL);
    CHECK(find_tensor(t, n, "model.layers.2.block_sparse_moe.gate.weight") == NULL);
    CHECK(find_tensor(t, n, "lm_head.weight") == NULL);
    free(t);
    int64_t d = 64, f = 160, V = 1000;
    int64_t attn = 2 * d * d + 2 * d * 32, dense = 3 * d * f, norms = 2 * d;
    mc_params p = mc_param_count(&c);
    CHECK(p.total == V * d + 4 * (attn + norms) + 2 * dense + 2 * (4 * d + 4 * dense) + d);
    CHECK(p.active == V * d + 4 * (attn + norms) + 2 * dense + 2 * (4 * d + 2 * dense) + d);
    CHECK(p.active_matmul == 4 * attn + 2 * dense + 2 * (4 * d + 2 * dense) + V * d);   /* tied head still a matmul */
    CHECK(p.embedding == V * d);

    /* Written back: the unknown upcyc key and the layer list survive. */
    char *text = mc_to_json(&c);
    CHECK(strstr(text, "\"router_order\": \"softmax_topk\"") != NULL);
    CHECK(strstr(text, "\"moe_layers\": [\n      1,\n      3\n    ]") != NULL);
    CHECK(strstr(text, "\"rms_norm_eps\": 1e-06,") != NULL);
    CHECK(strstr(text, "\"rope_theta\": 1000000.0,") != NULL);
    CHECK(strstr(text, "\"bos_token_id\": null,") != NULL);
    model_config c2;
    mc_parse(&c2, text, strlen(text), "again");
    CHECK(!mc_layer_is_moe(&c2, 2) && mc_layer_is_moe(&c2, 3) && c2.capacity_factor == 1.25);
    mc_free(&c2);

    /* Save atomically into a directory and load it back from there. */
    mc_save(&c, scratch);
    model_config c3;
    mc_load(&c3, scratch);
    char *text3 = mc_to_json(&c3);
    CHECK(strcmp(text, text3) == 0);
    free(text3);
    mc_free(&c3);
    free(text);

    /* A copy is independent. */
    model_config c4;
    mc_copy(&c4, &c);
    c4.layer_is_moe[0] = true;
    CHECK(!mc_layer_is_moe(&c, 0));
    mc_free(&c4);
    mc_free(&c);

    /* A dense config from scratch: defaults then validate; head_dim may
     * differ from hidden/heads when given. */
    mc_init(&c, false);
    c.vocab_size = 100;
    c.hidden_size = 48;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.head_dim = 8;
    mc_validate(&c, "built");
    CHECK(c.num_key_value_heads == 4 && c.rope_theta == 10000.0 && c.rms_norm_eps == 1e-6);
    t = mc_tensors(&c, &n);
    const mc_tensor *q = find_tensor(t, n, "model.layers.1.self_attn.q_proj.weight");
    const mc_tensor *o = find_tensor(t, n, "model.layers.1.self_attn.o_proj.weight");
    CHECK(q && q->shape[0] == 32 && q->shape[1] == 48 && o && o->shape[0] == 48 && o->shape[1] == 32);
    free(t);
    CHECK(mc_train_flops_per_token(&c, 10) ==
          6.0 * (2 * (2 * 48 * 32 + 2 * 48 * 32 + 3 * 48 * 96) + 100 * 48) + 12.0 * 2 * 4 * 8 * 10);
    mc_free(&c);

    const char *scaled = "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 8,"
                         " \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                         " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}";
    mc_parse(&c, scaled, strlen(scaled), "scaled");
    CHECK(mc_unsupported(&c) && strstr(mc_unsupported(&c), "rope_scaling"));
    mc_free(&c);
}

#define BASE "\"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 128, " \
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 4"

static void test_bad(void)
{
    char *missing = fixture("no-such-config.json");
    EXPECT_FAIL(load_path, missing, EX_NOINPUT, "no-such-config.json");
    free(missing);
    EXPECT_FAIL(parse_text, "{\"vocab_size\": ", EX_DATAERR, "cfg.json", "not valid JSON");
    EXPECT_FAIL(parse_text, "[1]", EX_DATAERR, "cfg.json", "expected a JSON object");
    EXPECT_FAIL(parse_text, "{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE "}", EX_DATAERR,
                "architectures", "'Qwen2ForCausalLM' is not supported");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"gpt2\", " BASE "}", EX_DATAERR, "model_type", "'gpt2'");
    EXPECT_FAIL(parse_text, "{" BASE "}", EX_DATAERR, "architectures and model_type");
    EXPECT_FAIL(parse_text, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"mixtral\", " BASE "}",
                EX_DATAERR, "model_type", "contradicts");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", \"vocab_size\": 100, \"intermediate_size\": 128, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 4}", EX_DATAERR, "hidden_size", "missing");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": -64, "
                "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
                EX_DATAERR, "hidden_size", "positive");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": \"64\", "
                "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
                EX_DATAERR, "hidden_size", "expected an integer");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 3}", EX_DATAERR,
                "num_key_value_heads", "does not divide");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 66, "
                "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
                EX_DATAERR, "hidden_size", "head_dim");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"head_dim\": 15}", EX_DATAERR, "head_dim", "odd");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"hidden_act\": \"gelu\"}", EX_DATAERR,
                "hidden_act", "'gelu'");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"torch_dtype\": \"int8\"}", EX_DATAERR,
                "torch_dtype", "'int8'");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": 100}", EX_DATAERR,
                "eos_token_id", "outside the vocabulary");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"rms_norm_eps\": 0}", EX_DATAERR,
                "rms_norm_eps");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"tie_word_embeddings\": 1}", EX_DATAERR,
                "tie_word_embeddings", "true or false");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 2, "
                "\"num_experts_per_tok\": 3}", EX_DATAERR, "num_experts_per_tok", "more than num_local_experts");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 0}", EX_DATAERR,
                "num_local_experts", "positive");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"upcyc\": {\"moe_layers\": [0, 2]}}",
                EX_DATAERR, "upcyc.moe_layers[1]", "[0, 2)");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"upcyc\": {\"moe_layers\": [1, 1]}}",
                EX_DATAERR, "upcyc.moe_layers[1]", "twice");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"upcyc\": [1]}", EX_DATAERR, "upcyc",
                "expected an object");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"upcyc\": {\"capacity_factor\": \"x\"}}",
                EX_DATAERR, "capacity_factor", "expected a number");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"mixtral\", " BASE ", \"upcyc\": {\"router_z_loss_coef\": -1}}",
                EX_DATAERR, "router_z_loss_coef", ">= 0");
    EXPECT_FAIL(parse_text, "{\"model_type\": \"llama\", " BASE ", \"hidden_size\": 64}", EX_DATAERR,
                "cfg.json", "duplicate");
}

int main(int argc, char **argv)
{
    upc_init("test_model_config");
    if (argc != 3) {
        fprintf(stderr, "usage: test_model_config FIXTURE_DIR SCRATCH_DIR\n");
        return EX_USAGE;
    }
    fixtures = argv[1];
    scratch = argv[2];
    test_llama3();
    test_mixtral();
    test_upcyc_and_defaults();
    test_bad();
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
