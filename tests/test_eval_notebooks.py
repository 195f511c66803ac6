"""notebooks/quality_grid.ipynb and notebooks/compression_walkthrough.ipynb executed in their QUICK setting with
nbclient (tiny random model, seconds each): every cell runs, the figures are written, and the printed tables say
what the pipeline guarantees (an fp32 artifact at rate 0 equals the base model on every document)."""
from __future__ import annotations

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
