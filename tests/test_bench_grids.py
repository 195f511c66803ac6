"""uniql.bench.speed_memory and uniql.bench.adaptive_trace (the logic behind notebooks/speed_memory.ipynb and
notebooks/adaptive.ipynb; the notebooks' QUICK runs are in test_eval_notebooks.py): bad settings give clear errors,
a configuration that fails is reported in the run instead of ending it, and one uniql cell measured in process is
consistent (TTLT = TTFT + (gen - 1) x TPOT)."""
from __future__ import annotations

import json

import pytest

from uniql.bench import adaptive_trace as at
from uniql.bench import speed_memory as sm
from uniql.errors import InvalidArgumentError
from uniql.eval.grid import tiny_inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_inputs(tmp_path_factory.mktemp("benchgrids"), ablations=False)


def _cfg(tiny, **kw):
    return sm.SpeedConfig(str(tiny["base"]), {"fp32": str(tiny["fp32"]), "int4": str(tiny["int4"])}, **kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(gen=1), "gen must be >= 2"),
    (dict(rates=(0.0, 1.0)), "rates must be in"),
    (dict(kinds=("int8",)), "kind 'int8' is not one of"),
    (dict(batches=()), "batches must be"),
    (dict(batches=(0,)), "batches must be"),
    (dict(prompt=0), "prompt must be an int >= 1"),
    (dict(threads=True), "threads must be an int >= 1"),
])
def test_speed_config_rejects_bad_settings(tiny, kw, msg):
    with pytest.raises(InvalidArgumentError, match=msg):
        _cfg(tiny, **kw)


def test_speed_config_needs_the_artifacts_of_its_kinds(tiny, tmp_path):
    with pytest.raises(InvalidArgumentError, match="needs an 'int4' artifact"):
        sm.SpeedConfig(str(tiny["base"]), {"fp32": str(tiny["fp32"])})
    with pytest.raises(InvalidArgumentError, match="is not a model directory"):
        sm.SpeedConfig(str(tmp_path), {"fp32": str(tiny["fp32"]), "int4": str(tiny["int4"])})


def test_uniql_cell_in_process(tiny):
    import uniql

    cfg = _cfg(tiny, prompt=16, gen=6, batches=(1, 3), batch_prompt=4, batch_steps=4, repeats=1)
    row = sm.measure_cell(sm.Cell("uniql", "int4-a32", 0.25, str(tiny["int4"])), cfg)
    # one repeat: TTFT and TTLT come from the same request, 5 decode steps after the prompt
    assert row["ttlt_ms"] == pytest.approx(row["ttft_ms"] + 5 * row["tpot_ms"], rel=1e-9)
    assert row["prefill_tok_s"] == pytest.approx(16 / (row["ttft_ms"] / 1e3))
    assert row["decode_tok_s"] == pytest.approx(1e3 / row["tpot_ms"])
    assert set(row["batched"]) == {"1", "3"} and all(v["tok_s"] > 0 for v in row["batched"].values())
    # the weights of the artifact loaded at that rate, as uniql.load reports them
    assert row["weight_bytes"] == uniql.load(tiny["int4"], rate=0.25).weight_bytes()
    assert row["weight_bytes"] < uniql.load(tiny["int4"], rate=0.0).weight_bytes()


def test_failed_cell_is_reported_not_fatal(tiny, tmp_path, monkeypatch):
    """An artifact whose weights are gone: its cells fail in their child processes with the UniqlError named in the
    report's notes; the other cells still ran."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny["int4"], broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    cfg = sm.SpeedConfig(str(tiny["base"]), {"fp32": str(tiny["fp32"]), "int4": str(broken)}, rates=(0.0,),
                         prompt=8, gen=2, batches=(1,), batch_prompt=4, batch_steps=2, repeats=1, llama_cpp=False,
                         torch=False)
    rep = sm.run(cfg, progress=False)
    ok = [r for r in rep["rows"] if "error" not in r]
    bad = [r for r in rep["rows"] if "error" in r]
    assert [r["kind"] for r in ok] == ["fp32"] and sorted(r["kind"] for r in bad) == ["int4-a32", "int4-a8"]
    assert len(rep["notes"]) == 2 and all("failed" in n and "Error" in n for n in rep["notes"])
    json.dumps(rep)  # the report is plain JSON
    assert "| uniql | fp32 | 0.00 |" in sm.format_table(rep)


@pytest.mark.parametrize("kw, msg", [
    (dict(seconds=0), "seconds must be > 0"),
    (dict(hog=(0.6, 0.3)), "hog must be"),
    (dict(runs=("off", "sometimes")), "run 'sometimes' is not one of"),
    (dict(tpot_ms=-1.0), "tpot_ms must be > 0"),
    (dict(seq_tokens=0), "seq_tokens must be a positive int"),
])
def test_trace_config_rejects_bad_settings(tiny, kw, msg):
    with pytest.raises(InvalidArgumentError, match=msg):
        at.TraceConfig(str(tiny["int4"]), **kw)


def test_trace_config_needs_an_artifact(tmp_path):
    with pytest.raises(InvalidArgumentError, match="is not a model directory"):
        at.TraceConfig(str(tmp_path))


def test_speed_cli_errors(tiny, capsys):
    with pytest.raises(SystemExit) as e:
        sm.main(["--checkpoint", str(tiny["base"]), "--fp32", str(tiny["fp32"]), "--int4", str(tiny["int4"]),
                 "--gen", "1"])
    assert e.value.code == 2 and "gen must be >= 2" in capsys.readouterr().err


def test_cell_that_hangs_is_killed_and_reported(tiny):
    cfg = sm.SpeedConfig(str(tiny["base"]), {"fp32": str(tiny["fp32"]), "int4": str(tiny["int4"])}, rates=(0.0,),
                         kinds=("fp32",), llama_cpp=False, torch=False, cell_timeout_s=0.05)
    rep = sm.run(cfg, progress=False)
    assert [r["error"] for r in rep["rows"]] == ["no result within 0.05 s"]
    assert rep["notes"] == ["uniql fp32 @0: failed (no result within 0.05 s)"]
