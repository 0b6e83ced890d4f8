/* model_config.c: HF config.json for Llama and Mixtral: parse, validate,
 * write; tensor list, parameter counts, FLOPs. */
#include "model_config.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Top-level keys this file interprets; everything else goes to `extra`. */
static const char *const KNOWN[] = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
    "hidden_act", "bos_token_id", "eos_token_id", "torch_dtype", "dtype",
    "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef",
    "router_jitter_noise", "norm_topk_prob", "output_router_logits", "upcyc", NULL,
};

void mc_init(model_config *c, bool moe)
{
    memset(c, 0, sizeof *c);
    c->moe = moe;
    c->max_position_embeddings = moe ? 4096 * 32 : 2048;
    c->rms_norm_eps = moe ? 1e-5 : 1e-6;
    c->rope_theta = moe ? 1e6 : 10000.0;
    c->bos_token_id = 1;
    c->eos_token_ids[0] = 2;
    c->n_eos = 1;
    c->num_local_experts = 8;
    c->num_experts_per_tok = 2;
    c->router_aux_loss_coef = 0.001;
    c->norm_topk_prob = true;
    c->extra = json_object();
}

void mc_free(model_config *c)
{
    free(c->layer_is_moe);
    json_decref(c->upcyc);
    json_decref(c->extra);
    memset(c, 0, sizeof *c);
}

void mc_copy(model_config *dst, const model_config *src)
{
    *dst = *src;
    dst->upcyc = src->upcyc ? json_deep_copy(src->upcyc) : NULL;
    dst->extra = src->extra ? json_deep_copy(src->extra) : json_object();
    dst->layer_is_moe = NULL;
    if (src->layer_is_moe) {
        size_t n = (size_t)src->num_hidden_layers;
        dst->layer_is_moe = upc_malloc(n * sizeof *dst->layer_is_moe);
        memcpy(dst->layer_is_moe, src->layer_is_moe, n * sizeof *dst->layer_is_moe);
    }
}

bool mc_layer_is_moe(const model_config *c, int64_t layer)
{
    if (!c->moe)
        return false;
    return !c->layer_is_moe || c->layer_is_moe[layer];
}

/* ---------------------------------------------------------------- parse */

/* Typed getters: false when absent or null; fail on a wrong type. */
static bool get_int(json_t *o, const char *key, int64_t *out, const char *name)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return false;
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) && fabs(json_real_value(v)) < 9e15) {
        *out = (int64_t)json_real_value(v);
        return true;
    }
    if (!json_is_integer(v))
        upc_fail(EX_DATAERR, "%s: %s: expected an integer", name, key);
    *out = json_integer_value(v);
    return true;
}

static bool get_num(json_t *o, const char *key, double *out, const char *name)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return false;
    if (!json_is_number(v))
        upc_fail(EX_DATAERR, "%s: %s: expected a number", name, key);
    *out = json_number_value(v);
    return true;
}

static bool get_bool(json_t *o, const char *key, bool *out, const char *name)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return false;
    if (!json_is_boolean(v))
        upc_fail(EX_DATAERR, "%s: %s: expected true or false", name, key);
    *out = json_is_true(v);
    return true;
}

static const char *get_str(json_t *o, const char *key, const char *name)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_string(v))
        upc_fail(EX_DATAERR, "%s: %s: expected a string", name, key);
    return json_string_value(v);
}

static void need_int(json_t *o, const char *key, int64_t *out, const char *name)
{
    if (!get_int(o, key, out, name))
        upc_fail(EX_DATAERR, "%s: %s: missing (a required field)", name, key);
}

/* The model family, from architectures[0] or else model_type. */
static bool parse_family(json_t *root, const char *name)
{
    const char *arch = NULL, *type = get_str(root, "model_type", name);
    json_t *a = json_object_get(root, "architectures");
    if (a && !json_is_null(a)) {
        if (!json_is_array(a) || json_array_size(a) == 0 || !json_is_string(json_array_get(a, 0)))
            upc_fail(EX_DATAERR, "%s: architectures: expected a list of strings", name);
        arch = json_string_value(json_array_get(a, 0));
    }
    int from_arch = -1, from_type = -1;
    if (arch) {
        if (strcmp(arch, "LlamaForCausalLM") == 0)
            from_arch = 0;
        else if (strcmp(arch, "MixtralForCausalLM") == 0)
            from_arch = 1;
        else
            upc_fail(EX_DATAERR, "%s: architectures: '%s' is not supported (expected LlamaForCausalLM or "
                     "MixtralForCausalLM)", name, arch);
    }
    if (type) {
        if (strcmp(type, "llama") == 0)
            from_type = 0;
        else if (strcmp(type, "mixtral") == 0)
            from_type = 1;
        else if (!arch)
            upc_fail(EX_DATAERR, "%s: model_type: '%s' is not supported (expected llama or mixtral)", name, type);
    }
    if (from_arch < 0 && from_type < 0)
        upc_fail(EX_DATAERR, "%s: architectures and model_type: both missing, cannot tell the model", name);
    if (from_arch >= 0 && from_type >= 0 && from_arch != from_type)
        upc_fail(EX_DATAERR, "%s: model_type: '%s' contradicts architectures '%s'", name, type, arch);
    return (from_arch >= 0 ? from_arch : from_type) == 1;
}

static void parse_upcyc(model_config *c, json_t *u, const char *name)
{
    if (!json_is_object(u))
        upc_fail(EX_DATAERR, "%s: upcyc: expected an object", name);
    c->upcyc = json_deep_copy(u);
    get_num(u, "router_z_loss_coef", &c->router_z_loss_coef, name);
    get_num(u, "capacity_factor", &c->capacity_factor, name);
    json_t *ml = json_object_get(u, "moe_layers");
    if (!ml || json_is_null(ml))
        return;
    if (!json_is_array(ml))
        upc_fail(EX_DATAERR, "%s: upcyc.moe_layers: expected a list of layer numbers", name);
    if (!c->moe)
        upc_fail(EX_DATAERR, "%s: upcyc.moe_layers: only meaningful for MixtralForCausalLM", name);
    c->layer_is_moe = upc_calloc((size_t)c->num_hidden_layers, sizeof *c->layer_is_moe);
    size_t i;
    json_t *v;
    json_array_foreach(ml, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= c->num_hidden_layers)
            upc_fail(EX_DATAERR, "%s: upcyc.moe_layers[%zu]: expected a layer number in [0, %lld)", name, i,
                     (long long)c->num_hidden_layers);
        if (c->layer_is_moe[json_integer_value(v)])
            upc_fail(EX_DATAERR, "%s: upcyc.moe_layers[%zu]: layer %lld listed twice", name, i,
                     (long long)json_integer_value(v));
        c->layer_is_moe[json_integer_value(v)] = true;
    }
    if (json_array_size(ml) == 0)
        upc_fail(EX_DATAERR, "%s: upcyc.moe_layers: empty; a MoE model needs at least one MoE layer", name);
}

static void parse_root(model_config *c, json_t *root, const char *name)
{
    if (!json_is_object(root))
        upc_fail(EX_DATAERR, "%s: expected a JSON object", name);
    mc_init(c, parse_family(root, name));
    need_int(root, "vocab_size", &c->vocab_size, name);
    need_int(root, "hidden_size", &c->hidden_size, name);
    need_int(root, "intermediate_size", &c->intermediate_size, name);
    need_int(root, "num_hidden_layers", &c->num_hidden_layers, name);
    need_int(root, "num_attention_heads", &c->num_attention_heads, name);
    get_int(root, "num_key_value_heads", &c->num_key_value_heads, name);
    get_int(root, "head_dim", &c->head_dim, name);
    get_int(root, "max_position_embeddings", &c->max_position_embeddings, name);
    get_num(root, "rms_norm_eps", &c->rms_norm_eps, name);
    get_num(root, "rope_theta", &c->rope_theta, name);
    get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, name);
    const char *act = get_str(root, "hidden_act", name);
    if (act && strcmp(act, "silu") != 0)
        upc_fail(EX_DATAERR, "%s: hidden_act: '%s' is not supported (expected silu)", name, act);

    json_t *bos = json_object_get(root, "bos_token_id");
    c->bos_token_id = -1;
    if (bos && !json_is_null(bos))
        need_int(root, "bos_token_id", &c->bos_token_id, name);
    else if (!bos)
        c->bos_token_id = 1;                    /* HF's default */
    json_t *eos = json_object_get(root, "eos_token_id");
    if (eos && json_is_array(eos)) {
        if (json_array_size(eos) > MC_MAX_EOS)
            upc_fail(EX_DATAERR, "%s: eos_token_id: more than %d ids", name, MC_MAX_EOS);
        c->n_eos = 0;
        size_t i;
        json_t *v;
        json_array_foreach(eos, i, v) {
            if (!json_is_integer(v))
                upc_fail(EX_DATAERR, "%s: eos_token_id[%zu]: expected an integer", name, i);
            c->eos_token_ids[c->n_eos++] = json_integer_value(v);
        }
    } else if (eos && json_is_null(eos)) {
        c->n_eos = 0;
    } else if (eos) {
        need_int(root, "eos_token_id", &c->eos_token_ids[0], name);
    }

    const char *dt = get_str(root, "torch_dtype", name);
    if (!dt)
        dt = get_str(root, "dtype", name);      /* newer transformers' name */
    if (dt) {
        if (strcmp(dt, "float32") && strcmp(dt, "bfloat16") && strcmp(dt, "float16"))
            upc_fail(EX_DATAERR, "%s: torch_dtype: '%s' is not supported (expected float32, bfloat16 or float16)",
                     name, dt);
        snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dt);
    }

    if (c->moe) {
        get_int(root, "num_local_experts", &c->num_local_experts, name);
        get_int(root, "num_experts_per_tok", &c->num_experts_per_tok, name);
        get_num(root, "router_aux_loss_coef", &c->router_aux_loss_coef, name);
        get_num(root, "router_jitter_noise", &c->router_jitter_noise, name);
        get_bool(root, "norm_topk_prob", &c->norm_topk_prob, name);
        get_bool(root, "output_router_logits", &c->output_router_logits, name);
    }
    json_t *u = json_object_get(root, "upcyc");
    if (u && !json_is_null(u)) {
        if (c->num_hidden_layers <= 0)
            upc_fail(EX_DATAERR, "%s: num_hidden_layers: must be positive, got %lld", name,
                     (long long)c->num_hidden_layers);
        parse_upcyc(c, u, name);
    }

    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        bool known = false;
        for (int i = 0; KNOWN[i] && !known; i++)
            known = strcmp(KNOWN[i], key) == 0;
        /* A dense config keeps MoE keys it does not use as they were. */
        if (!c->moe && (strcmp(key, "num_local_experts") == 0 || strcmp(key, "num_experts_per_tok") == 0 ||
                        strcmp(key, "router_aux_loss_coef") == 0 || strcmp(key, "router_jitter_noise") == 0 ||
                        strcmp(key, "norm_topk_prob") == 0 || strcmp(key, "output_router_logits") == 0))
            known = false;
        if (strcmp(key, "dtype") == 0 && json_object_get(root, "torch_dtype"))
            known = false;
        if (!known)
            json_object_set_new(c->extra, key, json_deep_copy(v));
    }
    mc_validate(c, name);
}

void mc_parse(model_config *c, const char *json_text, size_t len, const char *name)
{
    json_error_t err;
    json_t *root = json_loadb(json_text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        upc_fail(EX_DATAERR, "%s: line %d column %d: not valid JSON: %s", name, err.line, err.column, err.text);
    parse_root(c, root, name);
    json_decref(root);
}

void mc_load(model_config *c, const char *path)
{
    struct stat st;
    char *p = NULL;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 16;
        p = upc_malloc(n);
        snprintf(p, n, "%s/config.json", path);
        path = p;
    }
    size_t len;
    char *text = upc_read_file(path, &len);
    mc_parse(c, text, len, path);
    free(text);
    free(p);
}

/* ---------------------------------------------------------------- validate */

static void need_positive(int64_t v, const char *field, const char *name)
{
    if (v <= 0)
        upc_fail(EX_DATAERR, "%s: %s: must be positive, got %lld", name, field, (long long)v);
}

void mc_validate(model_config *c, const char *name)
{
    need_positive(c->vocab_size, "vocab_size", name);
    need_positive(c->hidden_size, "hidden_size", name);
    need_positive(c->intermediate_size, "intermediate_size", name);
    need_positive(c->num_hidden_layers, "num_hidden_layers", name);
    need_positive(c->num_attention_heads, "num_attention_heads", name);
    if (c->num_key_value_heads == 0)
        c->num_key_value_heads = c->num_attention_heads;
    need_positive(c->num_key_value_heads, "num_key_value_heads", name);
    if (c->num_attention_heads % c->num_key_value_heads)
        upc_fail(EX_DATAERR, "%s: num_key_value_heads: %lld does not divide num_attention_heads (%lld)", name,
                 (long long)c->num_key_value_heads, (long long)c->num_attention_heads);
    if (c->head_dim == 0) {
        if (c->hidden_size % c->num_attention_heads)
            upc_fail(EX_DATAERR, "%s: hidden_size: %lld is not num_attention_heads (%lld) x a head size; "
                     "give head_dim", name, (long long)c->hidden_size, (long long)c->num_attention_heads);
        c->head_dim = c->hidden_size / c->num_attention_heads;
    }
    need_positive(c->head_dim, "head_dim", name);
    if (c->head_dim % 2)
        upc_fail(EX_DATAERR, "%s: head_dim: %lld is odd; RoPE rotates pairs", name, (long long)c->head_dim);
    need_positive(c->max_position_embeddings, "max_position_embeddings", name);
    if (!(c->rms_norm_eps > 0 && isfinite(c->rms_norm_eps)))
        upc_fail(EX_DATAERR, "%s: rms_norm_eps: must be positive, got %g", name, c->rms_norm_eps);
    if (!(c->rope_theta > 0 && isfinite(c->rope_theta)))
        upc_fail(EX_DATAERR, "%s: rope_theta: must be positive, got %g", name, c->rope_theta);
    if (c->bos_token_id < -1 || c->bos_token_id >= c->vocab_size)
        upc_fail(EX_DATAERR, "%s: bos_token_id: %lld is outside the vocabulary [0, %lld)", name,
                 (long long)c->bos_token_id, (long long)c->vocab_size);
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] < 0 || c->eos_token_ids[i] >= c->vocab_size)
            upc_fail(EX_DATAERR, "%s: eos_token_id: %lld is outside the vocabulary [0, %lld)", name,
                     (long long)c->eos_token_ids[i], (long long)c->vocab_size);
    if (!c->moe)
        return;
    need_positive(c->num_local_experts, "num_local_experts", name);
    need_positive(c->num_experts_per_tok, "num_experts_per_tok", name);
    if (c->num_experts_per_tok > c->num_local_experts)
        upc_fail(EX_DATAERR, "%s: num_experts_per_tok: %lld is more than num_local_experts (%lld)", name,
                 (long long)c->num_experts_per_tok, (long long)c->num_local_experts);
    if (!(c->router_aux_loss_coef >= 0 && isfinite(c->router_aux_loss_coef)))
        upc_fail(EX_DATAERR, "%s: router_aux_loss_coef: must be >= 0, got %g", name, c->router_aux_loss_coef);
    if (!(c->router_jitter_noise >= 0 && c->router_jitter_noise < 1))
        upc_fail(EX_DATAERR, "%s: router_jitter_noise: must be in [0, 1), got %g", name, c->router_jitter_noise);
    if (!(c->router_z_loss_coef >= 0 && isfinite(c->router_z_loss_coef)))
        upc_fail(EX_DATAERR, "%s: upcyc.router_z_loss_coef: must be >= 0, got %g", name, c->router_z_loss_coef);
    if (!(c->capacity_factor >= 0 && isfinite(c->capacity_factor)))
        upc_fail(EX_DATAERR, "%s: upcyc.capacity_factor: must be >= 0 (0 = dropless), got %g", name,
                 c->capacity_factor);
}

const char *mc_unsupported(const model_config *c)
{
    json_t *v;
    if ((v = json_object_get(c->extra, "rope_scaling")) && !json_is_null(v))
        return "rope_scaling is not supported (must be null)";
    if ((v = json_object_get(c->extra, "attention_bias")) && !json_is_false(v))
        return "attention_bias is not supported (must be false)";
    if ((v = json_object_get(c->extra, "mlp_bias")) && !json_is_false(v))
        return "mlp_bias is not supported (must be false)";
    if ((v = json_object_get(c->extra, "sliding_window")) && !json_is_null(v))
        return "sliding_window is not supported (must be null)";
    return NULL;
}

/* ---------------------------------------------------------------- write */

/* A tiny JSON printer in the layout of Python's json.dumps(indent=2,
 * sort_keys=True), which transformers uses, with floats printed as Python's
 * repr does (shortest text that reads back the same, "1e-05", "500000.0");
 * jansson's "%.17g" would print 1.0000000000000001e-05. */
static void put_real(FILE *f, double v)
{
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (v == floor(v) && fabs(v) < 1e16)
        snprintf(buf, sizeof buf, "%.1f", v);
    fputs(buf, f);
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void put_json(FILE *f, json_t *v, int depth)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        if (n == 0) {
            fputs("{}", f);
            return;
        }
        const char **keys = upc_malloc(n * sizeof *keys);
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
            keys[i++] = k;
        qsort(keys, n, sizeof *keys, cmp_cstr);
        fputs("{\n", f);
        for (i = 0; i < n; i++) {
            json_t *ks = json_string(keys[i]);
            char *kt = json_dumps(ks, JSON_ENCODE_ANY);
            fprintf(f, "%*s%s: ", 2 * (depth + 1), "", kt);
            free(kt);
            json_decref(ks);
            put_json(f, json_object_get(v, keys[i]), depth + 1);
            fputs(i + 1 < n ? ",\n" : "\n", f);
        }
        fprintf(f, "%*s}", 2 * depth, "");
        free(keys);
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0) {
            fputs("[]", f);
            return;
        }
        fputs("[\n", f);
        for (size_t i = 0; i < n; i++) {
            fprintf(f, "%*s", 2 * (depth + 1), "");
            put_json(f, json_array_get(v, i), depth + 1);
            fputs(i + 1 < n ? ",\n" : "\n", f);
        }
        fprintf(f, "%*s]", 2 * depth, "");
        return;
    }
    case JSON_REAL:
        put_real(f, json_real_value(v));
        return;
    default: {
        char *t = json_dumps(v, JSON_ENCODE_ANY);
        fputs(t, f);
        free(t);
        return;
    }
    }
}

static void set_int(json_t *o, const char *k, int64_t v) { json_object_set_new(o, k, json_integer(v)); }
static void set_real(json_t *o, const char *k, double v) { json_object_set_new(o, k, json_real(v)); }
static void set_bool(json_t *o, const char *k, bool v) { json_object_set_new(o, k, json_boolean(v)); }

char *mc_to_json(const model_config *c)
{
    json_t *root = c->extra ? json_deep_copy(c->extra) : json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string(c->moe ? "MixtralForCausalLM" : "LlamaForCausalLM"));
    json_object_set_new(root, "architectures", arch);
    json_object_set_new(root, "model_type", json_string(c->moe ? "mixtral" : "llama"));
    set_int(root, "vocab_size", c->vocab_size);
    set_int(root, "hidden_size", c->hidden_size);
    set_int(root, "intermediate_size", c->intermediate_size);
    set_int(root, "num_hidden_layers", c->num_hidden_layers);
    set_int(root, "num_attention_heads", c->num_attention_heads);
    set_int(root, "num_key_value_heads", c->num_key_value_heads ? c->num_key_value_heads : c->num_attention_heads);
    if (c->head_dim)
        set_int(root, "head_dim", c->head_dim);
    set_int(root, "max_position_embeddings", c->max_position_embeddings);
    set_real(root, "rms_norm_eps", c->rms_norm_eps);
    set_real(root, "rope_theta", c->rope_theta);
    set_bool(root, "tie_word_embeddings", c->tie_word_embeddings);
    json_object_set_new(root, "hidden_act", json_string("silu"));
    json_object_set_new(root, "bos_token_id", c->bos_token_id >= 0 ? json_integer(c->bos_token_id) : json_null());
    if (c->n_eos == 1) {
        set_int(root, "eos_token_id", c->eos_token_ids[0]);
    } else if (c->n_eos == 0) {
        json_object_set_new(root, "eos_token_id", json_null());
    } else {
        json_t *e = json_array();
        for (int i = 0; i < c->n_eos; i++)
            json_array_append_new(e, json_integer(c->eos_token_ids[i]));
        json_object_set_new(root, "eos_token_id", e);
    }
    if (c->torch_dtype[0])
        json_object_set_new(root, "torch_dtype", json_string(c->torch_dtype));
    json_t *u = c->upcyc ? json_deep_copy(c->upcyc) : NULL;
    if (c->moe) {
        set_int(root, "num_local_experts", c->num_local_experts);
        set_int(root, "num_experts_per_tok", c->num_experts_per_tok);
        set_real(root, "router_aux_loss_coef", c->router_aux_loss_coef);
        set_real(root, "router_jitter_noise", c->router_jitter_noise);
        set_bool(root, "norm_topk_prob", c->norm_topk_prob);
        set_bool(root, "output_router_logits", c->output_router_logits);
        if (!u)
            u = json_object();
        set_real(u, "router_z_loss_coef", c->router_z_loss_coef);
        set_real(u, "capacity_factor", c->capacity_factor);
        json_object_del(u, "moe_layers");
        bool all = true;
        for (int64_t l = 0; l < c->num_hidden_layers; l++)
            all = all && mc_layer_is_moe(c, l);
        if (!all) {
            json_t *ml = json_array();
            for (int64_t l = 0; l < c->num_hidden_layers; l++)
                if (mc_layer_is_moe(c, l))
                    json_array_append_new(ml, json_integer(l));
            json_object_set_new(u, "moe_layers", ml);
        }
    }
    if (u)
        json_object_set_new(root, "upcyc", u);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        upc_fail(EX_OSERR, "out of memory");
    put_json(f, root, 0);
    fputc('\n', f);
    fclose(f);
    json_decref(root);
    return text;
}

void mc_save(const model_config *c, const char *path)
{
    struct stat st;
    char *p = NULL;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 16;
        p = upc_malloc(n);
        snprintf(p, n, "%s/config.json", path);
        path = p;
    }
    char *text = mc_to_json(c);
    upc_out o;
    upc_out_open(&o, path);
    upc_out_write(&o, text, strlen(text));
    upc_out_commit(&o);
    free(text);
    free(p);
}

/* ---------------------------------------------------------------- shapes */

static void add(mc_tensor *t, size_t *n, int64_t layer, int64_t expert, bool matmul, int64_t d0, int64_t d1,
                const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static void add(mc_tensor *t, size_t *n, int64_t layer, int64_t expert, bool matmul, int64_t d0, int64_t d1,
                const char *fmt, ...)
{
    mc_tensor *x = &t[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = d1 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->layer = layer;
    x->expert = expert;
    x->matmul = matmul;
}

mc_tensor *mc_tensors(const model_config *c, size_t *n)
{
    int64_t L = c->num_hidden_layers, d = c->hidden_size, f = c->intermediate_size, V = c->vocab_size;
    int64_t hd = c->head_dim ? c->head_dim : d / c->num_attention_heads;
    int64_t q = c->num_attention_heads * hd;
    int64_t kv = (c->num_key_value_heads ? c->num_key_value_heads : c->num_attention_heads) * hd;
    int64_t E = c->num_local_experts;
    size_t cap = 3;
    for (int64_t l = 0; l < L; l++)
        cap += 6 + (mc_layer_is_moe(c, l) ? 1 + 3 * (size_t)E : 3);
    mc_tensor *t = upc_calloc(cap, sizeof *t);
    *n = 0;
    add(t, n, -1, -1, false, V, d, "model.embed_tokens.weight");
    for (int64_t l = 0; l < L; l++) {
        long long ll = (long long)l;
        add(t, n, l, -1, false, d, 0, "model.layers.%lld.input_layernorm.weight", ll);
        add(t, n, l, -1, true, q, d, "model.layers.%lld.self_attn.q_proj.weight", ll);
        add(t, n, l, -1, true, kv, d, "model.layers.%lld.self_attn.k_proj.weight", ll);
        add(t, n, l, -1, true, kv, d, "model.layers.%lld.self_attn.v_proj.weight", ll);
        add(t, n, l, -1, true, d, q, "model.layers.%lld.self_attn.o_proj.weight", ll);
        add(t, n, l, -1, false, d, 0, "model.layers.%lld.post_attention_layernorm.weight", ll);
        if (mc_layer_is_moe(c, l)) {
            add(t, n, l, -1, true, E, d, "model.layers.%lld.block_sparse_moe.gate.weight", ll);
            for (int64_t e = 0; e < E; e++) {
                long long ee = (long long)e;
                add(t, n, l, e, true, f, d, "model.layers.%lld.block_sparse_moe.experts.%lld.w1.weight", ll, ee);
                add(t, n, l, e, true, f, d, "model.layers.%lld.block_sparse_moe.experts.%lld.w3.weight", ll, ee);
                add(t, n, l, e, true, d, f, "model.layers.%lld.block_sparse_moe.experts.%lld.w2.weight", ll, ee);
            }
        } else {
            add(t, n, l, -1, true, f, d, "model.layers.%lld.mlp.gate_proj.weight", ll);
            add(t, n, l, -1, true, f, d, "model.layers.%lld.mlp.up_proj.weight", ll);
            add(t, n, l, -1, true, d, f, "model.layers.%lld.mlp.down_proj.weight", ll);
        }
    }
    add(t, n, -1, -1, false, d, 0, "model.norm.weight");
    if (!c->tie_word_embeddings)
        add(t, n, -1, -1, true, V, d, "lm_head.weight");
    return t;
}

mc_params mc_param_count(const model_config *c)
{
    size_t n;
    mc_tensor *t = mc_tensors(c, &n);
    mc_params p = {0};
    for (size_t i = 0; i < n; i++) {
        int64_t numel = t[i].ndim == 2 ? t[i].shape[0] * t[i].shape[1] : t[i].shape[0];
        bool active = t[i].expert < 0 || t[i].expert < c->num_experts_per_tok;
        p.total += numel;
        if (active)
            p.active += numel;
        if (active && t[i].matmul)
            p.active_matmul += numel;
        if (strcmp(t[i].name, "model.embed_tokens.weight") == 0 || strcmp(t[i].name, "lm_head.weight") == 0)
            p.embedding += numel;
    }
    if (c->tie_word_embeddings)             /* the head's matmul runs on the shared weight */
        p.active_matmul += c->vocab_size * c->hidden_size;
    free(t);
    return p;
}

double mc_train_flops_per_token(const model_config *c, int64_t seq_len)
{
    mc_params p = mc_param_count(c);
    int64_t hd = c->head_dim ? c->head_dim : c->hidden_size / c->num_attention_heads;
    return 6.0 * (double)p.active_matmul +
           12.0 * (double)c->num_hidden_layers * (double)c->num_attention_heads * (double)hd * (double)seq_len;
}
