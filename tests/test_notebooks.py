"""notebooks/uniql_grid.ipynb executed with nbclient: the live tiny grid (no JSON inputs) and the JSON path (demo and
bench JSONs written here in the formats of ``uniql.demo --json`` and ``uniql.bench --json``)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "uniql_grid.ipynb"
RATES = (0.0, 0.15, 0.25, 0.35)
KINDS = ("fp32", "fp16", "int4", "int4-a8")
CELL_TIMEOUT_S = 180
QUALITY_PNGS = ("quality_perplexity.png", "quality_weights.png")
SPEED_PNGS = ("speed_decode.png", "speed_vs_baselines.png")


def _execute(monkeypatch, out_dir: Path, demo: Path | None = None, bench: Path | None = None) -> str:
    """Runs the notebook in a python3 kernel started from the repository root; returns its stdout."""
    monkeypatch.setenv("UNIQL_NB_OUT", str(out_dir))
    for var, path in (("UNIQL_DEMO_JSON", demo), ("UNIQL_BENCH_JSON", bench)):
        if path is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, str(path))
    # the kernel imports uniql from this checkout whether or not it is pip-installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def _assert_pngs(out_dir: Path, names: tuple[str, ...]) -> None:
    for name in names:
        p = out_dir / name
        assert p.is_file() and p.stat().st_size > 0, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def _table_rows(text: str, title: str) -> list[str]:
    """Body rows ('| 15% | ...') of the markdown table printed under `title`."""
    lines = text[text.index(title):].splitlines()[1:]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None


def test_notebook_live_tiny_grid(monkeypatch, tmp_path):
    out = tmp_path / "out"
    text = _execute(monkeypatch, out)
    _assert_pngs(out, QUALITY_PNGS)
    for name in SPEED_PNGS:
        assert not (out / name).exists()
    assert "live tiny grid" in text
    assert "speed grid skipped" in text
    rows = _table_rows(text, "perplexity by rate")
    assert [r.split("|")[1].strip() for r in rows] == [f"{r:.0%}" for r in RATES]
    for r in rows:  # fp32 and int4 columns, finite perplexities
        vals = [float(v) for v in r.strip("|").split("|")[1:]]
        assert len(vals) == 2 and all(v > 1.0 for v in vals)


def _demo_json(path: Path) -> Path:
    from uniql.eval.perplexity import RateResult

    rows = [RateResult(label=label, rate=rate, perplexity=14.0 * (1 + 3 * rate) * (1.5 if label == "int4" else 1),
                       weight_bytes=int((538e6 if label == "fp32" else 72e6) * (1 - rate / 2)),
                       parameters=int(134.5e6 * (1 - rate / 2)), decode_tok_s=25.0 + 100 * rate, sample="x")
            for label in ("fp32", "int4") for rate in RATES]
    path.write_text(json.dumps({"base_perplexity": 14.0, "tokens": 2048, "fp16_bytes": 269030016,
                                "rows": [r.as_dict() for r in rows]}))
    return path


def _bench_json(path: Path) -> Path:
    """A report with run()'s keys; the rows come from uniql.bench.summarize on synthetic timings."""
    from uniql.bench import BenchConfig, RunResult, summarize

    cfg = BenchConfig(models=("llama3.1-8b", "smollm2-135m"), torch=True, llama_cpp=True, micro=False)
    mach = {"cpu": "synthetic", "cores": 2, "kernels": "avx2", "threads": 2, "avx2": True, "avx512": False,
            "load_before": 0.0, "read_gbps_1t": 10.0, "read_gbps": 20.0, "fp32_peak_gmacs": 40.0,
            "int8_peak_gmacs": 80.0, "load_after": 0.0}
    per_kind = {"fp32": 4.0, "fp16": 2.0, "int4": 0.53, "int4-a8": 0.53}
    results = [RunResult(model=m, kind=k, rate=r, weights="random", layers=2, prefill_s=1.0 * (1 - r),
                         decode_s_per_token=0.01 * per_kind[k] * (1 - r) / (2 if k == "int4-a8" else 1),
                         memory_bytes=int(1e8), streamed_bytes=int(1e8 * per_kind[k] * (1 - r)), scale=4.0,
                         extra={"weight_bytes": int(1e8), "prompt_tokens": cfg.prompt})
               for m in cfg.models for k in cfg.kinds for r in cfg.rates]
    torch_res = {m: {"model": m, "prefill_s": 8.0, "decode_s_per_token": 0.2} for m in cfg.models}
    llama = {"models": {m: {"decode_tok_s": 20.0, "prefill_tok_s": 100.0, "weight_bytes": int(1e8)}
                        for m in cfg.models}}
    report = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
              "machine": mach, "runs": summarize(results, mach, torch_res, llama), "torch": torch_res,
              "llama_cpp": llama, "micro": [], "notes": [], "raw": [r.__dict__ for r in results], "wall_s": 1.0,
              "load_end": 0.0}
    path.write_text(json.dumps(report))
    return path


def test_notebook_from_json(monkeypatch, tmp_path):
    out = tmp_path / "out"
    text = _execute(monkeypatch, out, _demo_json(tmp_path / "demo.json"), _bench_json(tmp_path / "bench.json"))
    _assert_pngs(out, QUALITY_PNGS + SPEED_PNGS)
    assert "demo.json: SmolLM2" in text and "live tiny grid" not in text
    rows = _table_rows(text, "perplexity by rate")
    assert [r.split("|")[1].strip() for r in rows] == [f"{r:.0%}" for r in RATES]
    assert rows[0].split("|")[2].strip() == "14.00"
    for model in ("llama3.1-8b", "smollm2-135m"):
        kinds = [r.split("|")[1].strip() for r in _table_rows(text, f"{model}: decode tok/s")]
        assert kinds == list(KINDS)
    assert re.search(r"\(\d+\.\d\dx, \d+\.\d\dx\)", text)  # ratios to llama.cpp and PyTorch present
