"""The bench's llama.cpp comparison (``uniql.bench.bench_llama_cpp``, ``uniql.bench.llamacpp``).

Without ``llama-cpp-python`` (CI) the comparison must skip with a note and leave the rest of the report intact;
with it, a tiny checkpoint goes through the whole path (F32 GGUF written here, Q4_0 by llama.cpp's quantizer,
cached, timed) and the report carries well-formed numbers and ratios. Speed itself is never asserted.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from uniql import bench
from uniql.bench import llamacpp
from uniql.formats.gguf import unpermute_qk
from uniql.errors import ModelNotFoundError, ShapeError, StateError

from _helpers import tiny_llama_config, tiny_llama_tensors, write_tiny_llama

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM = 256, 128, 256, 2, 4, 2, 32
PROMPT, GEN = 8, 3


def tiny_config() -> dict:
    return tiny_llama_config(VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM)


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    return tiny_llama_tensors(tiny_config(), seed, shapes=llamacpp._random_shapes(tiny_config()))


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-llama", tiny_config(), tiny_tensors())


def tiny_bench_config(model: Path, **over) -> bench.BenchConfig:
    kw = dict(models=(str(model),), rates=(0.0,), kinds=("fp16", "int4"), prompt=PROMPT, gen=GEN, repeats=1,
              threads=1, torch=False, micro=False, bw_bytes=1 << 22)
    kw.update(over)
    return bench.BenchConfig(**kw)


def test_permute_qk_is_the_inverse_of_the_converters_unpermute(rng):
    for heads, d, cols in ((4, 32, 8), (1, 2, 1), (3, 64, 5)):
        w = rng.standard_normal((heads * d, cols)).astype(np.float32)
        p = llamacpp.permute_qk(w, heads)
        assert not np.array_equal(p, w) or d == 2
        np.testing.assert_array_equal(unpermute_qk(p, heads), w)
    with pytest.raises(ShapeError, match="even size"):
        llamacpp.permute_qk(np.zeros((6, 2), np.float32), 4)


def test_skips_with_a_note_when_llama_cpp_is_absent(monkeypatch, tiny_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    mod, why = llamacpp.import_llama_cpp()
    assert mod is None and "llama-cpp-python is not installed" in why
    notes: list[str] = []
    assert bench.bench_llama_cpp(tiny_bench_config(tiny_dir), 1, notes, cache=tmp_path / "cache") is None
    assert notes == [f"llama.cpp comparison skipped: {why}"]
    assert not (tmp_path / "cache").exists()
    notes.clear()
    assert bench.bench_llama_cpp(tiny_bench_config(tiny_dir, llama_cpp=False), 1, notes) is None
    assert notes == ["llama.cpp comparison skipped (--no-llama-cpp)"]


def test_whole_report_without_llama_cpp_has_no_llama_columns(monkeypatch, tiny_dir):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    rep = bench.run(tiny_bench_config(tiny_dir))
    assert rep["llama_cpp"] is None
    assert all("decode_vs_llama_cpp" not in r for r in rep["runs"])
    assert any(n.startswith("llama.cpp comparison skipped") for n in rep["notes"])
    text = bench.format_report(rep)
    assert "note: llama.cpp comparison skipped" in text and "ours / llama.cpp" not in text
    json.dumps(rep, default=float)


def test_gguf_holds_the_checkpoint_in_llama_cpp_layout(tiny_dir, tmp_path):
    gguf = pytest.importorskip("gguf")
    t = tiny_tensors()
    cfg = tiny_config()
    plan = llamacpp.tensor_plan(cfg, "llama", t.get, lambda n: t[n].shape if n in t else None,
                                 np.dtype(np.float32))
    path = tmp_path / "tiny.gguf"
    llamacpp.write_gguf(path, cfg, plan, arch="llama", name="tiny", tokenizer_from=None, file_type=0)
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["tokenizer.ggml.model"].contents() == "none"
    assert r.fields["llama.vocab_size"].contents() == VOCAB
    assert r.fields["llama.block_count"].contents() == LAYERS
    got = {x.name: np.asarray(x.data) for x in r.tensors}
    assert len(got) == len(t)
    np.testing.assert_array_equal(got["token_embd.weight"], t["model.embed_tokens.weight"])
    np.testing.assert_array_equal(got["output.weight"], t["lm_head.weight"])
    np.testing.assert_array_equal(got["blk.1.ffn_down.weight"], t["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(unpermute_qk(got["blk.0.attn_q.weight"], HEADS),
                                  t["model.layers.0.self_attn.q_proj.weight"])
    np.testing.assert_array_equal(unpermute_qk(got["blk.1.attn_k.weight"], KV),
                                  t["model.layers.1.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(got["blk.0.attn_v.weight"], t["model.layers.0.self_attn.v_proj.weight"])


def _finite_pos(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_tiny_model_through_llama_cpp(tiny_dir, tmp_path):
    L, why = llamacpp.import_llama_cpp()
    if L is None:
        pytest.skip(why)
    cache = tmp_path / "cache"
    cfg = tiny_bench_config(tiny_dir)
    notes: list[str] = []
    out = bench.bench_llama_cpp(cfg, 1, notes, cache=cache)
    assert notes == []
    assert out is not None and out["version"] == L.__version__ and out["threads"] == 1
    assert Path(out["lib_dir"]).is_dir() and out["system_info"]  # which llama.cpp build ran, recorded
    m = out["models"][str(tiny_dir)]
    for k in ("prefill_s", "decode_s_per_token", "decode_tok_s", "prefill_tok_s", "prefill_cpu_s",
              "decode_cpu_s_per_token", "decode_tok_s_cpu", "prefill_tok_s_cpu", "weight_bytes",
              "layer_weight_bytes", "n_params"):
        assert _finite_pos(m[k]), (k, m[k])
    assert m["n_vocab"] == VOCAB and m["n_layer"] == LAYERS and m["weights"] == "checkpoint"
    assert m["scale"] == 1.0 and m["lm_head_in_decode"] is False
    n_params = sum(int(np.prod(s)) for s in llamacpp._random_shapes(tiny_config()).values())
    assert m["n_params"] == n_params
    # Q4_0: 18 bytes per 32 weights in the 2-D tensors, float32 norms
    n_2d = sum(int(np.prod(s)) for s in llamacpp._random_shapes(tiny_config()).values() if len(s) == 2)
    assert m["weight_bytes"] == n_2d // 32 * 18 + (n_params - n_2d) * 4
    gg = Path(m["gguf"])
    assert gg.parent == cache and gg.name.endswith(".Q4_0.gguf") and [p.name for p in cache.iterdir()] == [gg.name]
    mtime = gg.stat().st_mtime_ns
    again = llamacpp.build_q4_0(L, llamacpp.GGUFSource(str(tiny_dir), bench.resolve_model(str(tiny_dir), 2, [])
                                                       .run_cfg, tiny_dir), 1, cache)
    assert again == gg and gg.stat().st_mtime_ns == mtime  # reused, not rebuilt

    rows = bench.summarize([], {}, {}, out)
    assert rows == []
    rep_rows = [{"model": str(tiny_dir), "kind": "int4", "rate": 0.0, "decode_tok_s": 2 * m["decode_tok_s"],
                 "prefill_tok_s": m["prefill_tok_s"], "decode_vs_llama_cpp": 2.0, "prefill_vs_llama_cpp": 1.0,
                 "weight_bytes_vs_llama_cpp": 1.0, "layer_bytes_vs_llama_cpp": 1.0}]
    text = "\n".join(bench._format_llama_cpp({"llama_cpp": out, "runs": rep_rows}))
    assert "Q4_0" in text and "int4 decode 2.00x (>= llama.cpp: yes)" in text
    assert f"llama.cpp libraries: {out['lib_dir']} ({out['system_info']})" in text


def test_whole_report_with_llama_cpp(tiny_dir, tmp_path, monkeypatch):
    L, why = llamacpp.import_llama_cpp()
    if L is None:
        pytest.skip(why)
    monkeypatch.setenv(llamacpp.CACHE_ENV, str(tmp_path / "cache"))
    rep = bench.run(tiny_bench_config(tiny_dir))
    assert rep["llama_cpp"] is not None and str(tiny_dir) in rep["llama_cpp"]["models"]
    for r in rep["runs"]:
        assert _finite_pos(r["decode_vs_llama_cpp"]) and _finite_pos(r["prefill_vs_llama_cpp"])
        assert _finite_pos(r["weight_bytes_vs_llama_cpp"]) and _finite_pos(r["layer_bytes_vs_llama_cpp"])
        assert _finite_pos(r["decode_vs_llama_cpp_cpu"]) and _finite_pos(r["prefill_vs_llama_cpp_cpu"])
    text = bench.format_report(rep)
    assert "llama.cpp" in text and "ours / llama.cpp Q4_0, rate 0: int4 decode" in text
    json.dumps(rep, default=float)


def test_llama_lib_folder_is_checked_and_reaches_the_child_env(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        llamacpp.lib_dir(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="holds no libllama"):
        llamacpp.lib_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="holds no libllama"):
        tiny_bench_config(tmp_path, llama_lib=str(tmp_path))
    assert tiny_bench_config(tmp_path, llama_lib=str(tmp_path), llama_cpp=False).llama_lib == str(tmp_path)
    (tmp_path / llamacpp._libllama_name()).write_bytes(b"")
    assert llamacpp.lib_dir(tmp_path) == tmp_path.absolute()
    env = {"PATH": "/bin", llamacpp.LIB_ENV: "/elsewhere"}
    assert llamacpp.child_env(env, tmp_path) == {"PATH": "/bin", llamacpp.LIB_ENV: str(tmp_path.absolute())}
    assert llamacpp.child_env(env, None) == {"PATH": "/bin"}  # the package's own libraries
    assert env[llamacpp.LIB_ENV] == "/elsewhere"  # a copy
    with pytest.raises(ModelNotFoundError):
        llamacpp.child_env(env, tmp_path / "nope")


def test_use_lib_only_before_llama_cpp_is_imported(tmp_path, monkeypatch):
    (tmp_path / llamacpp._libllama_name()).write_bytes(b"")
    # setenv first so that monkeypatch restores the variable's absence: use_lib below writes os.environ itself, and
    # a stale folder there would make every later llama_cpp import (the notebooks' children too) load nothing
    monkeypatch.setenv(llamacpp.LIB_ENV, "unset")
    monkeypatch.delenv(llamacpp.LIB_ENV)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not imported (an import would fail)
    assert llamacpp.use_lib(None) is None and llamacpp.LIB_ENV not in os.environ
    assert llamacpp.use_lib(tmp_path) == tmp_path.absolute()
    assert os.environ[llamacpp.LIB_ENV] == str(tmp_path.absolute())
    other = tmp_path / "other"
    other.mkdir()
    (other / llamacpp._libllama_name()).write_bytes(b"")

    def loaded_from(folder: Path) -> SimpleNamespace:
        lib = SimpleNamespace(_name=str(folder / llamacpp._libllama_name()))
        return SimpleNamespace(llama_cpp=SimpleNamespace(_lib=lib), llama_print_system_info=lambda: b"AVX2 = 1 | ")

    monkeypatch.setitem(sys.modules, "llama_cpp", loaded_from(other))
    assert llamacpp.lib_info(sys.modules["llama_cpp"]) == {"lib_dir": str(other), "system_info": "AVX2 = 1 |"}
    assert llamacpp.use_lib(other) == other  # the libraries already loaded: fine
    with pytest.raises(StateError, match="fresh process"):
        llamacpp.use_lib(tmp_path)


def test_a_child_loads_llama_cpp_from_the_folder_it_is_given(tmp_path):
    L, why = llamacpp.import_llama_cpp()
    if L is None:
        pytest.skip(why)
    own = Path(llamacpp.lib_info(L)["lib_dir"])
    assert (own / llamacpp._libllama_name()).is_file()
    alt = tmp_path / "libs"
    alt.mkdir()
    for f in own.iterdir():  # the same build, seen from another folder
        (alt / f.name).symlink_to(f)
    code = ("import json; from uniql.bench import llamacpp; L, why = llamacpp.import_llama_cpp(); "
            "print(json.dumps(llamacpp.lib_info(L)))")
    root = Path(__file__).resolve().parent.parent
    got = {}
    for name, lib in (("alt", alt), ("own", None)):
        env = llamacpp.child_env(dict(os.environ, PYTHONPATH=str(root)), lib)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        got[name] = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["alt"]["lib_dir"] == str(alt) and Path(got["own"]["lib_dir"]).resolve() == own.resolve()
    assert "AVX" in got["alt"]["system_info"] or "NEON" in got["alt"]["system_info"]
    assert got["alt"]["system_info"] == got["own"]["system_info"]
