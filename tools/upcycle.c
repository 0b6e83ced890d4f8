/* upcycle: turn a dense Llama checkpoint directory into a Mixtral (MoE)
 * checkpoint directory, streaming tensor by tensor (lib/upcycle.h). */
#include "model_config.h"
#include "mpk.h"
#include "safetensors.h"
#include "upcycle.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: upcycle --experts E --top-k K [options] DENSE_DIR OUT_DIR\n"
    "\n"
    "Copy a dense Llama checkpoint (config.json, model.safetensors or shards\n"
    "with an index, tokenizer.json) into a Mixtral checkpoint: every FFN of\n"
    "the chosen layers becomes E experts behind a new router; everything else\n"
    "is copied unchanged. OUT_DIR appears only when complete. One msgpack\n"
    "summary record on stdout, a human summary on stderr.\n"
    "\n"
    "options:\n"
    "  --experts E          experts per MoE layer (required)\n"
    "  --top-k K            experts per token, 1 to E (required)\n"
    "  --seed N             seed of every random choice (default 0)\n"
    "  --router-init KIND   normal, zeros or uniform (default normal)\n"
    "  --router-std X       std of the router init (default 0.02)\n"
    "  --routing ORDER      renorm-topk (default; reproduces the dense model)\n"
    "                       or softmax-topk (top-k of the softmax, not renormalised)\n"
    "  --aux-loss-coef X    router_aux_loss_coef (default 0.01)\n"
    "  --expert-noise STD   add N(0, STD) noise to every expert weight\n"
    "  --drop-ratio R       Drop-Upcycling: per expert re-initialise a share R\n"
    "                       of the intermediate dims from N(mean, std) of them\n"
    "  --granularity G      fine-grained experts: each takes 1/G of the FFN,\n"
    "                       down projection scaled by G (default 1)\n"
    "  --layers SPEC        all (default), every:N, or a list like 0,2,4-7\n"
    "  --dtype T            f32, bf16, f16 or same (default same)\n"
    "  --shard-size N       start a new safetensors shard past N bytes;\n"
    "                       suffixes K, M, G (default 5G)\n"
    "  --seq-len T          sequence length of the FLOPs figures (default 4096)\n"
    "  --force              replace an existing OUT_DIR\n"
    "  -h, --help           show this help\n"
    "  --version            show the version\n";

/* Copy DENSE_DIR/name into dir when present (atomically, like every output). */
static void copy_if_present(const char *from_dir, const char *to_dir, const char *name)
{
    char *src = upc_path_join(from_dir, name);
    struct stat st;
    if (stat(src, &st) == 0 && S_ISREG(st.st_mode)) {
        size_t len;
        char *text = upc_read_file(src, &len);
        char *dst = upc_path_join(to_dir, name);
        upc_out o;
        upc_out_open(&o, dst);
        upc_out_write(&o, text, len);
        upc_out_commit(&o);
        free(dst);
        free(text);
    }
    free(src);
}

static void pack_model(msgpack_packer *pk, const char *key, const model_config *c, uint64_t bytes, int64_t seq)
{
    mc_params p = mc_param_count(c);
    mpk_pack_cstr(pk, key);
    msgpack_pack_map(pk, 5);
    mpk_pack_key_int(pk, "params", p.total);
    mpk_pack_key_int(pk, "active_params", p.active);
    mpk_pack_key_int(pk, "embedding_params", p.embedding);
    mpk_pack_key_double(pk, "train_flops_per_token", mc_train_flops_per_token(c, seq));
    mpk_pack_key_uint(pk, "weight_bytes", bytes);
}

int main(int argc, char **argv)
{
    upc_init("upcycle");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = o.top_k = 0;
    bool have_e = false, have_k = false, force = false;
    const char *layers = "all", *pos[2] = {NULL, NULL};
    uint64_t shard_bytes = 5ULL << 30;
    int64_t seq_len = 4096;
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (upc_is_help(a)) {
            fputs(usage, stdout);
            return 0;
        } else if (upc_is_version(a)) {
            upc_print_version();
            return 0;
        } else if (strcmp(a, "--force") == 0) {
            force = true;
        } else if (strcmp(a, "--experts") == 0 && more) {
            o.experts = upc_parse_int(a, argv[++i], 1, 1 << 20);
            have_e = true;
        } else if (strcmp(a, "--top-k") == 0 && more) {
            o.top_k = upc_parse_int(a, argv[++i], 1, 1 << 20);
            have_k = true;
        } else if (strcmp(a, "--seed") == 0 && more) {
            o.seed = (uint64_t)upc_parse_int(a, argv[++i], 0, INT64_MAX);
        } else if (strcmp(a, "--router-init") == 0 && more) {
            const char *v = argv[++i];
            if (strcmp(v, "normal") == 0)
                o.router_init = UPCYCLE_ROUTER_NORMAL;
            else if (strcmp(v, "zeros") == 0)
                o.router_init = UPCYCLE_ROUTER_ZEROS;
            else if (strcmp(v, "uniform") == 0)
                o.router_init = UPCYCLE_ROUTER_UNIFORM;
            else
                upc_usage_fail("--router-init: expected normal, zeros or uniform, got '%s'", v);
        } else if (strcmp(a, "--router-std") == 0 && more) {
            o.router_std = upc_parse_double(a, argv[++i], 0, 1e6);
        } else if (strcmp(a, "--routing") == 0 && more) {
            const char *v = argv[++i];
            if (strcmp(v, "renorm-topk") == 0)
                o.softmax_topk = false;
            else if (strcmp(v, "softmax-topk") == 0)
                o.softmax_topk = true;
            else
                upc_usage_fail("--routing: expected renorm-topk or softmax-topk, got '%s'", v);
        } else if (strcmp(a, "--aux-loss-coef") == 0 && more) {
            o.aux_loss_coef = upc_parse_double(a, argv[++i], 0, 1e6);
        } else if (strcmp(a, "--expert-noise") == 0 && more) {
            o.expert_noise = upc_parse_double(a, argv[++i], 0, 1e6);
        } else if (strcmp(a, "--drop-ratio") == 0 && more) {
            o.drop_ratio = upc_parse_double(a, argv[++i], 0, 1);
        } else if (strcmp(a, "--granularity") == 0 && more) {
            o.granularity = upc_parse_int(a, argv[++i], 1, 1 << 20);
        } else if (strcmp(a, "--layers") == 0 && more) {
            layers = argv[++i];
        } else if (strcmp(a, "--dtype") == 0 && more) {
            const char *v = argv[++i];
            if (strcmp(v, "f32") == 0)
                o.out_dtype = ST_F32;
            else if (strcmp(v, "bf16") == 0)
                o.out_dtype = ST_BF16;
            else if (strcmp(v, "f16") == 0)
                o.out_dtype = ST_F16;
            else if (strcmp(v, "same") == 0)
                o.out_dtype = -1;
            else
                upc_usage_fail("--dtype: expected f32, bf16, f16 or same, got '%s'", v);
        } else if (strcmp(a, "--shard-size") == 0 && more) {
            shard_bytes = (uint64_t)upc_parse_int(a, argv[++i], 1, INT64_MAX);
        } else if (strcmp(a, "--seq-len") == 0 && more) {
            seq_len = upc_parse_int(a, argv[++i], 1, INT32_MAX);
        } else if (a[0] == '-' && a[1]) {
            upc_usage_fail("unknown option or missing value: '%s'", a);
        } else {
            if (npos == 2)
                upc_usage_fail("unexpected argument '%s'", a);
            pos[npos++] = a;
        }
    }
    if (!have_e)
        upc_usage_fail("missing --experts E");
    if (!have_k)
        upc_usage_fail("missing --top-k K");
    if (npos < 2)
        upc_usage_fail(npos ? "missing OUT_DIR" : "missing DENSE_DIR and OUT_DIR");
    if (o.top_k > o.experts)
        upc_usage_fail("--top-k %lld is more than --experts %lld", (long long)o.top_k, (long long)o.experts);

    const char *dense_dir = pos[0];
    char out_dir[PATH_MAX];
    snprintf(out_dir, sizeof out_dir, "%s", pos[1]);
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/'; n--)
        out_dir[n - 1] = 0;

    struct stat st;
    if (stat(dense_dir, &st) != 0)
        upc_fail(EX_NOINPUT, "%s: %s, expected a checkpoint directory", dense_dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        upc_fail(EX_NOINPUT, "%s: not a directory, expected a checkpoint directory", dense_dir);
    bool exists = lstat(out_dir, &st) == 0;
    if (exists && !force)
        upc_fail(EX_CANTCREAT, "%s: already exists (--force replaces it)", out_dir);
    if (exists && !S_ISDIR(st.st_mode))
        upc_fail(EX_CANTCREAT, "%s: exists and is not a directory; not replacing it", out_dir);

    /* The summary goes to stdout: refuse a terminal before any work. */
    mpk_writer sum;
    mpk_writer_open(&sum, "-");

    char *config_path = upc_path_join(dense_dir, "config.json");
    model_config dense, moe;
    mc_load(&dense, config_path);
    bool *flags = upc_calloc((size_t)dense.num_hidden_layers, sizeof *flags);
    char err[256];
    if (!upcycle_parse_layers(layers, dense.num_hidden_layers, flags, err, sizeof err))
        upc_usage_fail("--layers %s", err);
    o.moe_layers = flags;
    upcycle_config(&dense, &o, &moe, config_path);

    st_reader *r = st_open(dense_dir);
    uint64_t dense_bytes;
    size_t extra = upcycle_check_checkpoint(r, &dense, &dense_bytes);
    if (extra)
        upc_warn("%s: %zu tensors the config does not name are not copied", st_path(r), extra);

    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_dir, (long)getpid());
    if (mkdir(tmp, 0777) != 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", tmp, strerror(errno));
    upc_tmp_register(tmp);

    st_writer *w = st_writer_dir(tmp, "model", shard_bytes);
    st_writer_meta(w, "upcyc", "upcycle");
    uint64_t moe_bytes = upcycle_write(r, &dense, &moe, &o, w);
    st_writer_commit(w);
    char *tmp_config = upc_path_join(tmp, "config.json");
    mc_save(&moe, tmp_config);
    free(tmp_config);
    static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                             "generation_config.json"};
    for (size_t i = 0; i < sizeof side_files / sizeof *side_files; i++)
        copy_if_present(dense_dir, tmp, side_files[i]);
    upc_fsync_dir(tmp);

    upc_publish_dir(tmp, out_dir);

    double dense_flops = mc_train_flops_per_token(&dense, seq_len);
    double moe_flops = mc_train_flops_per_token(&moe, seq_len);
    int64_t n_moe = 0;
    for (int64_t l = 0; l < moe.num_hidden_layers; l++)
        n_moe += mc_layer_is_moe(&moe, l);
    msgpack_packer *pk = &sum.pk;
    msgpack_pack_map(pk, 12);
    mpk_pack_key_str(pk, "event", "upcycle");
    mpk_pack_key_str(pk, "output", out_dir);
    mpk_pack_key_int(pk, "experts", moe.num_local_experts);
    mpk_pack_key_int(pk, "top_k", moe.num_experts_per_tok);
    mpk_pack_key_int(pk, "granularity", o.granularity);
    mpk_pack_key_int(pk, "moe_layers", n_moe);
    mpk_pack_key_int(pk, "seq_len", seq_len);
    pack_model(pk, "dense", &dense, dense_bytes, seq_len);
    pack_model(pk, "moe", &moe, moe_bytes, seq_len);
    mpk_pack_key_double(pk, "iso_flop_multiplier", dense_flops / moe_flops);
    mpk_pack_key_double(pk, "total_param_ratio", (double)mc_param_count(&moe).total / (double)mc_param_count(&dense).total);
    mpk_pack_key_double(pk, "active_param_ratio",
                        (double)mc_param_count(&moe).active / (double)mc_param_count(&dense).active);
    mpk_writer_commit(&sum);

    mc_params dp = mc_param_count(&dense), mp = mc_param_count(&moe);
    fprintf(stderr,
            "upcycle: %s -> %s: %lld of %lld layers MoE, %lld experts, top-%lld\n"
            "upcycle: params %.4gB -> %.4gB total, %.4gB active; weights %.3f -> %.3f GB\n"
            "upcycle: train FLOPs/token (T=%lld) %.4g -> %.4g; iso-FLOP token multiplier %.4f\n",
            dense_dir, out_dir, (long long)n_moe, (long long)moe.num_hidden_layers, (long long)moe.num_local_experts,
            (long long)moe.num_experts_per_tok, dp.total / 1e9, mp.total / 1e9, mp.active / 1e9, dense_bytes / 1e9,
            moe_bytes / 1e9, (long long)seq_len, dense_flops, moe_flops, dense_flops / moe_flops);

    st_close(r);
    mc_free(&dense);
    mc_free(&moe);
    free(flags);
    free(config_path);
    return 0;
}
