#!/usr/bin/env python3
"""model_reference.py DIR...: an independent, pure-Python (no numpy) forward of
Hugging Face transformers' LlamaForCausalLM / MixtralForCausalLM, written from
the transformers modelling code (LlamaRMSNorm, rotate_half RoPE with
inv_freq = theta^(-2i/hd) and emb = cat(freqs, freqs), repeat_kv GQA, causal
softmax attention, SiLU-gated MLP, MixtralSparseMoeBlock: softmax router,
top-k, renormalised unless norm_topk_prob is false). For each DIR written by
`test_model --dump`, it reads config.json and model.safetensors, runs the
batch of forward.txt and compares the logits and losses the C model wrote.
Exit 1 naming the first mismatch."""
import json
import math
import struct
import sys


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        vals = list(struct.unpack("<%df" % ((b - a) // 4), data[a:b]))
        shape = t["shape"]
        if len(shape) == 2:
            vals = [vals[r * shape[1]:(r + 1) * shape[1]] for r in range(shape[0])]
        out[name] = vals
    return out


def linear(x, w):            # x [n][in], w [out][in] -> [n][out]
    return [[sum(a * b for a, b in zip(row, wr)) for wr in w] for row in x]


def rmsnorm(x, w, eps):
    out = []
    for row in x:
        r = 1.0 / math.sqrt(sum(v * v for v in row) / len(row) + eps)
        out.append([wi * (v * r) for v, wi in zip(row, w)])
    return out


def softmax(v):
    m = max(v)
    e = [math.exp(a - m) for a in v]
    s = sum(e)
    return [a / s for a in e]


def silu(v):
    return v / (1.0 + math.exp(-v))


def rope(x, pos, hd, theta):  # one head vector, rotate-half layout
    half = hd // 2
    inv = [1.0 / theta ** (2 * i / hd) for i in range(half)]
    cos = [math.cos(pos * f) for f in inv] * 2
    sin = [math.sin(pos * f) for f in inv] * 2
    rot = [-v for v in x[half:]] + x[:half]
    return [a * c + r * s for a, c, r, s in zip(x, cos, rot, sin)]


def mlp(x, g, u, d):
    gate, up = linear(x, g), linear(x, u)
    act = [[silu(a) * b for a, b in zip(gr, ur)] for gr, ur in zip(gate, up)]
    return linear(act, d)


def forward(cfg, W, ids, B, T):
    d = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or d // H
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    moe = cfg["architectures"][0] == "MixtralForCausalLM"
    moe_layers = set(cfg.get("upcyc", {}).get("moe_layers", range(cfg["num_hidden_layers"])))
    emb = W["model.embed_tokens.weight"]
    x = [list(emb[i]) for i in ids]
    lbs, zs = [], []
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = linear(h, W[p + "self_attn.q_proj.weight"])
        k = linear(h, W[p + "self_attn.k_proj.weight"])
        v = linear(h, W[p + "self_attn.v_proj.weight"])
        att = [[0.0] * (H * hd) for _ in range(B * T)]
        for b in range(B):
            for hh in range(H):
                kvh = hh // (H // Hkv)
                qs = [rope(q[b * T + t][hh * hd:(hh + 1) * hd], t, hd, theta) for t in range(T)]
                ks = [rope(k[b * T + t][kvh * hd:(kvh + 1) * hd], t, hd, theta) for t in range(T)]
                vs = [v[b * T + t][kvh * hd:(kvh + 1) * hd] for t in range(T)]
                for t in range(T):
                    sc = [sum(a * c for a, c in zip(qs[t], ks[s])) / math.sqrt(hd) for s in range(t + 1)]
                    pr = softmax(sc)
                    for i in range(hd):
                        att[b * T + t][hh * hd + i] = sum(pr[s] * vs[s][i] for s in range(t + 1))
        o = linear(att, W[p + "self_attn.o_proj.weight"])
        x = [[a + c for a, c in zip(r1, r2)] for r1, r2 in zip(x, o)]
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        if moe and l in moe_layers:
            E, k_ = cfg["num_local_experts"], cfg["num_experts_per_tok"]
            logits = linear(h, W[p + "block_sparse_moe.gate.weight"])
            probs = [softmax(r) for r in logits]
            out = [[0.0] * d for _ in h]
            counts = [0] * E
            for n, pr in enumerate(probs):
                top = sorted(range(E), key=lambda e: (-pr[e], e))[:k_]
                w = [pr[e] for e in top]
                if cfg.get("norm_topk_prob", True):
                    w = [a / sum(w) for a in w]
                for e, we in zip(top, w):
                    counts[e] += 1
                    q_ = p + "block_sparse_moe.experts.%d." % e
                    y = mlp([h[n]], W[q_ + "w1.weight"], W[q_ + "w3.weight"], W[q_ + "w2.weight"])[0]
                    out[n] = [a + we * c for a, c in zip(out[n], y)]
            N = len(h)
            P = [sum(pr[e] for pr in probs) / N for e in range(E)]
            lbs.append(E * sum(counts[e] / N * P[e] for e in range(E)))   # HF Mixtral scale
            zs.append(sum((max(r) + math.log(sum(math.exp(a - max(r)) for a in r))) ** 2 for r in logits) / N)
        else:
            out = mlp(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"], W[p + "mlp.down_proj.weight"])
        x = [[a + c for a, c in zip(r1, r2)] for r1, r2 in zip(x, out)]
    h = rmsnorm(x, W["model.norm.weight"], eps)
    head = emb if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    lb = sum(lbs) / len(lbs) if lbs else 0.0
    z = sum(zs) / len(zs) if zs else 0.0
    return linear(h, head), lb, z


def check(dirname):
    cfg = json.load(open(dirname + "/config.json"))
    W = load_safetensors(dirname + "/model.safetensors")
    rows = [line.split() for line in open(dirname + "/forward.txt")]
    B, T = int(rows[0][1]), int(rows[0][2])
    ids = [int(a) for a in rows[1][1:]]
    targets = [int(a) for a in rows[2][1:]]
    total, ce, lb, z = (float(a) for a in rows[3][1:])
    logits_c = [[float(a) for a in r[1:]] for r in rows[4:]]
    logits, lb_ref, z_ref = forward(cfg, W, ids, B, T)
    worst = max(abs(a - b) for ra, rb in zip(logits, logits_c) for a, b in zip(ra, rb))
    losses = []
    for r, t in zip(logits, targets):
        if t >= 0:
            m = max(r)
            losses.append(m + math.log(sum(math.exp(a - m) for a in r)) - r[t])
    ce_ref = sum(losses) / len(losses)
    total_ref = ce_ref
    if cfg["architectures"][0] == "MixtralForCausalLM":
        total_ref += cfg["router_aux_loss_coef"] * lb_ref + cfg.get("upcyc", {}).get("router_z_loss_coef", 0) * z_ref
    print("%s: max |logit - reference| %.2e; ce %.7f ref %.7f; lb %.7f ref %.7f; z %.7f ref %.7f; total %.7f ref %.7f"
          % (dirname, worst, ce, ce_ref, lb, lb_ref, z, z_ref, total, total_ref))
    ok = worst < 1e-4 and abs(ce - ce_ref) < 1e-5 and abs(lb - lb_ref) < 1e-5 and abs(z - z_ref) < 1e-4 \
        and abs(total - total_ref) < 1e-5
    if not ok:
        print("model_reference: %s: the C model disagrees with the reference" % dirname, file=sys.stderr)
    return ok


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: model_reference.py DIR...")
    sys.exit(0 if all([check(d) for d in sys.argv[1:]]) else 1)
