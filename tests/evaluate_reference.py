#!/usr/bin/env python3
"""evaluate_reference.py: an independent check of `evaluate`'s scores.

  evaluate_reference.py texts MC.jsonl LM.jsonl DIR
      writes each text to score, 0-shot, as DIR/tNNN.txt (contexts and
      continuations assembled by LLM Foundry's 0-shot rule: context =
      stripped query, continuation = choice with a leading space unless it
      has one), for `tokenize encode --split file` to turn into ids.
  evaluate_reference.py check CKPT MC.jsonl LM.jsonl IDS.jsonl ITEMS.jsonl
      recomputes every candidate's summed log-likelihood with the pure-Python
      HF forward of model_reference.py ([bos] + context ids + continuation
      ids) and compares it, the prediction and the correctness with
      `evaluate --per-item` records (records json). Exit 1 at a mismatch."""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_reference import forward, load_safetensors  # noqa: E402


def items(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def candidates(mc, lm):
    """[(task, item, [(context, continuation), ...], gold)] in file order."""
    out = []
    for i, it in enumerate(mc):
        ctx = it["query"].strip()
        conts = [c if c.startswith(" ") else " " + c for c in it["choices"]]
        out.append(("mc", i, [(ctx, c) for c in conts], it["gold"]))
    for i, it in enumerate(lm):
        c = it["continuation"].strip()
        out.append(("lm", i, [(it["context"].strip(), c if c.startswith(" ") else " " + c)], 0))
    return out


def texts(cands):
    flat = []
    for _, _, pairs, _ in cands:
        for ctx, cont in pairs:
            flat += [ctx, cont]
    return flat


def logprobs(cfg, W, ids, start):
    logits, _, _ = forward(cfg, W, ids, 1, len(ids))
    total, greedy = 0.0, True
    for p in range(start - 1, len(ids) - 1):
        row = logits[p]
        m = max(row)
        lse = m + math.log(sum(math.exp(a - m) for a in row))
        total += row[ids[p + 1]] - lse
        greedy &= max(range(len(row)), key=lambda v: (row[v], -v)) == ids[p + 1]
    return total, greedy


def check(ckpt, mc, lm, ids_path, items_path):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    W = load_safetensors(os.path.join(ckpt, "model.safetensors"))
    ids = [r["tokens"] for r in items(ids_path) if "tokens" in r]
    got = {}
    for r in items(items_path):
        if r.get("event") == "item":
            task = "mc" if r["label"] == "ref_mc" else "lm"
            got[(task, r["item"])] = r
    cands = candidates(mc, lm)
    assert len(ids) == len(texts(cands)), (len(ids), len(texts(cands)))
    lead = cfg["bos_token_id"]
    at, worst = 0, 0.0
    for task, i, pairs, gold in cands:
        r = got.get((task, i))
        if r is None:
            print("no item record for %s item %d" % (task, i))
            return False
        ref = []
        for _ in pairs:
            ctx, cont = ids[at], ids[at + 1]
            at += 2
            ref.append(logprobs(cfg, W, [lead] + ctx + cont, 1 + len(ctx)) + (len(cont),))
        for c, (lp, greedy, n) in enumerate(ref):
            err = abs(lp - r["logprob"][c]) / max(1.0, abs(lp))
            worst = max(worst, err)
            if err > 1e-4 or n != r["tokens"][c]:
                print("%s item %d candidate %d: logprob %.6f over %d tokens, reference %.6f over %d" %
                      (task, i, c, r["logprob"][c], r["tokens"][c], lp, n))
                return False
        if task == "mc":
            means = [lp / n for lp, _, n in ref]
            pred = max(range(len(means)), key=lambda c: (means[c], -c))
            if pred != r["pred"] or (pred == gold) != r["correct"]:
                print("mc item %d: predicted %d (correct %s), reference %d" % (i, r["pred"], r["correct"], pred))
                return False
        elif ref[0][1] != r["correct"]:
            print("lm item %d: correct %s, reference greedy %s" % (i, r["correct"], ref[0][1]))
            return False
    print("evaluate_reference: %d items agree; worst relative log-likelihood error %.2e" % (len(cands), worst))
    return True


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "texts":
        for n, t in enumerate(texts(candidates(items(sys.argv[2]), items(sys.argv[3])))):
            with open(os.path.join(sys.argv[4], "t%03d.txt" % n), "w") as f:
                f.write(t)
        sys.exit(0)
    if len(sys.argv) == 7 and sys.argv[1] == "check":
        sys.exit(0 if check(sys.argv[2], items(sys.argv[3]), items(sys.argv[4]), sys.argv[5], sys.argv[6]) else 1)
    print(__doc__, file=sys.stderr)
    sys.exit(64)
