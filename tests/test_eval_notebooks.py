"""notebooks/quality_grid.ipynb and notebooks/compression_walkthrough.ipynb executed in their QUICK setting with
nbclient (tiny random model, seconds each): every cell runs, the figures are written, and the printed tables say
what the pipeline guarantees (an fp32 artifact at rate 0 equals the base model on every document); likewise
notebooks/speed_memory.ipynb and notebooks/adaptive.ipynb, checked through the JSON reports they write."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = 300


def _execute(monkeypatch, name: str, out_dir: Path) -> str:
    monkeypatch.setenv("UNIQL_NB_QUICK", "1")
    monkeypatch.setenv("UNIQL_NB_OUT", str(out_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def _pngs(out_dir: Path, names: tuple[str, ...]) -> None:
    for n in names:
        p = out_dir / f"{n}.png"
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", n


def test_quality_grid_quick(monkeypatch, tmp_path):
    text = _execute(monkeypatch, "quality_grid.ipynb", tmp_path)
    _pngs(tmp_path, ("quality_accuracy", "quality_paired", "quality_perplexity"))
    assert "QUICK=True" in text and "documents per task: {'toy': 20, 'ppl:toy.txt': 6}" in text
    paired = next(line for line in text.splitlines() if line.startswith("| toy | Δacc"))
    assert paired.split("|")[3].strip() == "0.0000 ± 0.0000"  # fp32 at rate 0 == base on every document
    assert "fp32-magnitude@0.15 vs fp32@0.15" in text  # the ablation section ran


def test_compression_walkthrough_quick(monkeypatch, tmp_path):
    text = _execute(monkeypatch, "compression_walkthrough.ipynb", tmp_path)
    _pngs(tmp_path, ("walk_statistics", "walk_scores", "walk_mlp_error", "walk_qasvd", "walk_int4"))
    assert "layer 1: 128 calibration tokens, 128 held-out tokens" in text
    keep_rows = [line for line in text.splitlines() if line.startswith("| 100% |")]
    assert keep_rows and all(v.strip() == "0.0000" for v in keep_rows[0].split("|")[2:-1])  # nothing pruned
    assert "self_attn.q_proj: RTN" in text and "mlp.gate_proj: RTN" in text


def test_speed_memory_quick(monkeypatch, tmp_path):
    """notebooks/speed_memory.ipynb on the tiny model: every cell of uniql (3 kinds x 4 rates), llama.cpp (F32,
    Q4_0) and PyTorch ran in its own process, and the report obeys what the artifacts guarantee."""
    import json

    text = _execute(monkeypatch, "speed_memory.ipynb", tmp_path)
    _pngs(tmp_path, ("speed_tpot_prefill", "speed_memory", "speed_ttft_ttlt", "speed_batched"))
    rep = json.loads((tmp_path / "speed_memory.json").read_text())
    assert "QUICK=True" in text and f"{len(rep['rows'])} of {len(rep['rows'])} cells ran" in text
    rows = {(r["engine"], r["kind"], r["rate"]): r for r in rep["rows"]}
    rates = (0.0, 0.15, 0.25, 0.35)
    assert {(e, k, r) for e, k, r in rows if e == "uniql"} == {("uniql", k, r) for k in ("fp32", "int4-a8", "int4-a32")
                                                             for r in rates}
    if importlib.util.find_spec("llama_cpp") is not None:
        assert ("llama.cpp", "F32", 0.0) in rows and ("llama.cpp", "Q4_0", 0.0) in rows
    if importlib.util.find_spec("torch") is not None:
        assert ("pytorch", "fp32", 0.0) in rows
    for r in rows.values():
        assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["ttlt_ms"] >= r["ttft_ms"] and r["rss_bytes"] > 0
        assert set(r["batched"]) == {"1", "4"} and all(v["tok_s"] > 0 for v in r["batched"].values())
    for k in ("fp32", "int4-a8", "int4-a32"):  # loading at a higher rate reads fewer weights
        wb = [rows[("uniql", k, r)]["weight_bytes"] for r in rates]
        assert all(a > b for a, b in zip(wb, wb[1:])), (k, wb)
    for r in rates:  # int4 weights are the same bytes whatever the activations; well under the fp32 ones
        a8, a32, f = (rows[("uniql", k, r)]["weight_bytes"] for k in ("int4-a8", "int4-a32", "fp32"))
        assert a8 == a32 < f / 4
    if ("llama.cpp", "F32", 0.0) in rows:  # the same fp32 parameters (uniql also counts small per-layer tables)
        assert rows[("uniql", "fp32", 0.0)]["weight_bytes"] == pytest.approx(
            rows[("llama.cpp", "F32", 0.0)]["weight_bytes"], rel=0.01)
    assert "| fp32 | 0% | 1.00x |" in text  # the ratio table ran


def test_adaptive_quick(monkeypatch, tmp_path):
    """notebooks/adaptive.ipynb on the tiny int4 artifact with a target below reach: the pinned run stays at rate 0,
    the controlled runs climb to the artifact's top rate through recorded decisions, and the hog phase is on the
    timeline of every run."""
    import json

    text = _execute(monkeypatch, "adaptive.ipynb", tmp_path)
    _pngs(tmp_path, ("adaptive_timeline", "adaptive_phases"))
    rep = json.loads((tmp_path / "adaptive_trace.json").read_text())
    assert "QUICK=True" in text and list(rep["runs"]) == ["off", "lazy", "follow"]
    assert rep["target_ms"] < rep["quiet_tpot_ms"]
    for name, r in rep["runs"].items():
        toks = r["tokens"]
        assert toks and {t["phase"] for t in toks} == {"quiet", "cpu hog"}
        assert all(a["t"] <= b["t"] for a, b in zip(toks, toks[1:]))
        if name == "off":
            assert {t["rate"] for t in toks} == {0.0} and not r["decisions"]
        else:
            ups = [d for d in r["decisions"] if d["event"] == "rate"]
            assert ups and ups[-1]["to"] == pytest.approx(0.35) and toks[-1]["rate"] == pytest.approx(0.35)
            assert all("latency" in d["reason"] for d in ups)
    assert "| off |" in text and "| follow |" in text


def _recorded(path):
    """A recorded result file's text; the large ones are stored gzipped as path + ".gz" (as the notebook reads them)."""
    import gzip

    gz = path.with_name(path.name + ".gz")
    return gzip.decompress(gz.read_bytes()).decode() if gz.is_file() else path.read_text()


def _found(folder, pattern):
    return sorted({q.with_name(q.name.removesuffix(".gz")) for q in folder.glob(pattern + "*")})


def test_finetune_grid(monkeypatch, tmp_path):
    """notebooks/finetune_grid.ipynb reads the recorded GPU run (benchmarks/results/finetune_gpu_smollm2): the
    figures are written and the printed grid agrees with a recomputation from the JSON here."""
    import json

    import numpy as np

    text = _execute(monkeypatch, "finetune_grid.ipynb", tmp_path)
    _pngs(tmp_path, ("ft_training", "ft_ppl", "ft_zeroshot", "ft_rank"))
    res = ROOT / "benchmarks" / "results" / "finetune_gpu_smollm2"
    # the capacity table: each run's last held-out loss, from its own log (run 4: what the device printed)
    run4 = json.loads(_recorded(res / "run4_stop25_rank64" / "printed.json"))
    for label, last in (("run 2, rank 8", [json.loads(x) for x in _recorded(res / "run2_stop23" / "log.jsonl")
                                           .splitlines() if '"event": "eval"' in x][-1]),
                        ("run 4, rank 64", {"step": run4["evals"][-1][0], "loss": run4["evals"][-1][1]}),
                        ("run 5, rank 64, 64 windows per step",
                         [json.loads(x) for x in _recorded(res / "run5_stop26_rank64" / "log.jsonl").splitlines()
                          if '"event": "eval"' in x][-1]),
                        ("run 6, run 5 continued, 128 windows per step",
                         [json.loads(x) for x in _recorded(res / "run6_stop27_rank64_cont" / "log.jsonl").splitlines()
                          if '"event": "eval"' in x][-1])):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert row.rstrip().endswith(f"| {last['loss']:.4f} (step {last['step']}) |"), row
    cells = {}
    for f in sorted(_found(res, "zs_*.json")):
        for name, per_rate in json.loads(_recorded(f)).items():
            for r, per_task in per_rate.items():
                cells[f"{name}@{r}"] = per_task
    for f in sorted(_found(res / "run5_stop26_rank64", "zs_*.json")):   # run 5's grid and its int4 ablations
        for name, per_rate in json.loads(_recorded(f)).items():
            for r, per_task in per_rate.items():
                cells[f"{name}@{r}" if name.startswith("abl_") else f"run 5: {name}@{r}"] = per_task
    for f in sorted(_found(res / "run6_stop27_rank64_cont", "zs_*.json")):   # run 6's grid (run 5 continued)
        for name, per_rate in json.loads(_recorded(f)).items():
            for r, per_task in per_rate.items():
                cells[f"run 6: {name}@{r}"] = per_task
    assert sum(k.startswith("abl_int4_") for k in cells) == 6 and sum(k.startswith("run 5: ") for k in cells) == 16
    assert sum(k.startswith("run 6: ") for k in cells) == 16
    # run 6's "before" cells come from the same compress output as run 5's: equal on every document
    before6 = [k for k in cells if k.startswith("run 6: before")]
    assert len(before6) == 8 and all(cells[k] == cells["run 5: " + k.removeprefix("run 6: ")] for k in before6)
    assert "run 6's before cells equal to run 5's on every document: 8 of 8" in text
    tasks = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
    for key, per in cells.items():
        avg = np.mean([np.mean(per[t]["acc_norm"]) for t in tasks])
        row = next(line for line in text.splitlines() if line.startswith(f"| {key} |"))
        assert row.split("|")[7].strip().startswith(f"{avg:.4f} ± "), (key, row)
    assert next(line for line in text.splitlines() if line.startswith("| before_fp32@0.00 |")).split("|")[8].strip() \
        == "+0.0000 ± 0.0000"
    # MMLU in full: every question of the 57 subjects, micro accuracy and the subject mean recomputed here
    subj = json.loads(_recorded(res / "mmlu_subjects.json"))
    full = [(f, "") for f in _found(res, "mmlu_full_*.json")] + \
        [(f, "run 5: ") for f in _found(res / "run5_stop26_rank64", "mmlu_all_*.json")]
    assert len(full) == 13
    for f, label in full:
        for name, per_rate in json.loads(_recorded(f)).items():
            for r, per_task in per_rate.items():
                key = name if name.startswith("before") else label + name   # run 5's before cells: run 3's artifacts
                m = per_task["mmlu"]
                assert len(m["doc_ids"]) == len(subj["subject_of_doc"]) == 14042
                groups = np.asarray(subj["subject_of_doc"])[m["doc_ids"]]
                macro = np.mean([np.mean(np.asarray(m["acc"])[groups == g]) for g in np.unique(groups)])
                row = next(line for line in text.splitlines() if line.startswith(f"| {key}@{r} | 14042 |"))
                assert row.split("|")[3].strip().startswith(f"{np.mean(m['acc']):.4f} ± "), row
                assert row.split("|")[5].strip() == f"{macro:.4f} (57 subjects)", row
    ev = json.loads(_recorded(res / "eval_after.json"))
    base = json.loads(_recorded(res / "eval_before.json"))["base_ppl"]
    assert f"{ev['fp32_after']['0.15']:.2f} ({ev['fp32_after']['0.15'] / base:.3f}x)" in text
    # run 5 scored two of run 3's full-MMLU cells again (each subject's prefix shared): the same answer everywhere
    assert "the same answer on: {'before_fp32@0.00': '100.00%', 'before_int4@0.15': '100.00%'}" in text
    ev5 = json.loads(_recorded(res / "run5_stop26_rank64" / "eval_after.json"))
    assert "  run 5: " + " / ".join(f"{ev5['fp32_after'][r] / base:.3f}" for r in ("0.00", "0.15", "0.25", "0.35")) in text
    ev6 = json.loads(_recorded(res / "run6_stop27_rank64_cont" / "eval_after.json"))
    assert "  run 6: " + " / ".join(f"{ev6['fp32_after'][r] / base:.3f}" for r in ("0.00", "0.15", "0.25", "0.35")) in text
