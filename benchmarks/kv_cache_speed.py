"""The float16 KV cache against the float32 one: default int4 (W4A8) decode and prefill of ``uniql.bench``'s models
(the real SmolLM2-135M; the Llama-3.1-8B-shaped stack of 2 layers, per-token weight bytes of its layer linears),
both caches built from the same tensors and timed alternately in one process, per kernel path.

    python benchmarks/kv_cache_speed.py [--model smollm2|llama3.1-8b] [--paths avx512,avx2] [--rates 0,0.35]
                                        [--prompt 512] [--gen 32] [--rounds 5]

Times are process CPU seconds at 1 thread (a loaded machine's waits for a core are not counted); each round times
prefill then decode of every (path, rate, cache) cell, and the medians over rounds are printed with the fp16/fp32 speed
ratios and the layer weights' decode stream as a fraction of the read bandwidth measured at the start. One JSON line
at the end holds everything.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # this folder's kernels.py shadows a package
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from uniql import _C, bench  # noqa: E402
from uniql.models.runtime import Model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--paths", default="avx512,avx2")
    ap.add_argument("--rates", default="0,0.35")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    _C.kernels_set_threads(1)
    _C.kernels_set_q4_act("int8")
    info = _C.kernels_info()
    paths = [p for p in a.paths.split(",") if info.get(p)]
    rates = [float(r) for r in a.rates.split(",")]
    mach = bench.machine_info(1, 2)
    name = bench.canonical_model(a.model)
    src = bench.resolve_model(name, 2, [])
    t = (bench.checkpoint_tensors(src.src_dir, src.run_cfg, "int4-a8") if src.src_dir is not None
         else bench.random_tensors(src.run_cfg, "int4-a8"))
    models = {kv: Model.from_hf_tensors(src.run_cfg, t, qk_layout="rotate_half", max_seq=a.prompt + a.gen + 8,
                                        max_chunk=a.prompt, kv_dtype=kv) for kv in ("fp16", "fp32")}
    del t
    stored_r = [models["fp16"].stored(i)["attn"] for i in range(models["fp16"].num_layers)]
    keeps = {r: bench.apply_rate(models["fp16"], r) for r in rates}
    wbytes = {r: bench.weight_bytes_per_token(src.run_cfg, "int4-a8", keeps[r], stored_r) for r in rates}
    ids = np.random.default_rng(1).integers(0, src.run_cfg["vocab_size"], a.prompt + a.gen).astype(np.int32)
    cells: dict[str, dict[str, list[float]]] = {}
    for rnd in range(a.rounds):
        for p in paths:
            _C.kernels_set(p)
            for r in rates:
                order = ("fp16", "fp32") if rnd % 2 == 0 else ("fp32", "fp16")
                for kv in order:
                    m = models[kv]
                    bench.apply_rate(m, r)
                    m.reset()
                    c0 = time.process_time()
                    m.forward(ids[:a.prompt], last_only=True)
                    cp = time.process_time() - c0
                    c0 = time.process_time()
                    for j in range(a.gen):
                        m.forward(ids[a.prompt + j:a.prompt + j + 1], last_only=True)
                    cd = (time.process_time() - c0) / a.gen
                    c = cells.setdefault(f"{p} {r:g} {kv}", {"prefill_s": [], "decode_s": []})
                    c["prefill_s"].append(cp)
                    c["decode_s"].append(cd)
        print(f"round {rnd} done, load {os.getloadavg()[0]:.2f}", flush=True)
    summary = {}
    bw = mach["read_gbps"]
    print(f"{name}: read bandwidth {bw:.1f} GB/s (1 thread), KV cache {models['fp32'].kv_cache_bytes() / 1e6:.1f} MB "
          f"fp32 / {models['fp16'].kv_cache_bytes() / 1e6:.1f} MB fp16 at max_seq {a.prompt + a.gen + 8}")
    for p in paths:
        for r in rates:
            s = {}
            for kv in ("fp16", "fp32"):
                c = cells[f"{p} {r:g} {kv}"]
                d, pf = statistics.median(c["decode_s"]), statistics.median(c["prefill_s"])
                s[kv] = {"decode_tok_s": 1 / d, "prefill_tok_s": a.prompt / pf, "bw_frac": wbytes[r] / d / 1e9 / bw}
            s["decode_ratio"] = s["fp16"]["decode_tok_s"] / s["fp32"]["decode_tok_s"]
            s["prefill_ratio"] = s["fp16"]["prefill_tok_s"] / s["fp32"]["prefill_tok_s"]
            summary[f"{p} {r:g}"] = s
            print(f"{p} rate {r:g}: decode fp16 {s['fp16']['decode_tok_s']:.1f} vs fp32 "
                  f"{s['fp32']['decode_tok_s']:.1f} tok/s ({s['decode_ratio']:.3f}x), prefill "
                  f"{s['fp16']['prefill_tok_s']:.0f} vs {s['fp32']['prefill_tok_s']:.0f} ({s['prefill_ratio']:.3f}x); "
                  f"layer weights {s['fp16']['bw_frac']:.0%} / {s['fp32']['bw_frac']:.0%} of read bw (CPU time)")
    print(json.dumps({"args": vars(a), "machine": mach, "cells": cells, "summary": summary,
                      "kv_bytes": {k: m.kv_cache_bytes() for k, m in models.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
