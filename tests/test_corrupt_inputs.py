"""Corrupt inputs through the public API: every malformed file a user may download (checkpoint, shard index,
tokenizer, artifact, GGUF) must end in a specific ``uniql`` exception whose message names the problem -- never a
segfault, never a half-written output.

Cases that reach C code with corrupt data run in a subprocess (``_isolated``), so that a crash fails one test
instead of killing pytest. What tests/test_safetensors.py, tests/test_checkpoint.py, tests/test_convert.py and
tests/test_compress.py already cover (the safetensors validator case by case, config.json errors, shard-index
errors, a non-UTF-8 tokenizer.json in ``load_tokenizer``, a junk GGUF, a future artifact version) is not repeated
here; these tests take the same kinds of corruption through the *entry points* (``uniql.load``,
``compress``, ``convert_gguf``) and the artifact. Known gaps are ``xfail(strict=True)`` with the reason.

The C readers themselves are fuzzed by libFuzzer (``make -C csrc fuzz``); the artifact's config.json is parsed
in Python only, so it is fuzzed here by random mutation (``test_artifact_config_mutations_*``), bounded to a few
seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql.formats import gguf as convert
from uniql.formats import safetensors as st
from uniql.compress.pipeline import compress

from _helpers import tiny_llama_config, tiny_llama_tensors, write_tiny_llama

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM = 128, 64, 128, 2, 4, 2, 16
NSAMP, SEQ = 4, 16
SUBPROCESS_TIMEOUT_S = 120
MUTATION_ITERS = 600          # artifact config.json mutations (about 4 s)
MUTATION_SEED = 20240611


# ------------------------------------------------------------------------------------------ fixtures ----

def tiny_config() -> dict:
    return tiny_llama_config(VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM)


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the tiny Llama under Hugging Face names (std 0.05, norms around 1)."""
    return tiny_llama_tensors(tiny_config(), seed)


def write_checkpoint(d: Path, tensors: dict[str, np.ndarray] | None = None, cfg: dict | None = None) -> Path:
    return write_tiny_llama(d, cfg or tiny_config(), tensors if tensors is not None else tiny_tensors())


def calib() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))


def run_compress(src: Path, out: Path, **kw) -> Path:
    kw.setdefault("quantize", False)
    return compress(src, out, calibration=calib(), num_samples=NSAMP, seq_len=SEQ, progress=False, **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corrupt")
    src = write_checkpoint(root / "src")
    return {"src": src, "f32": run_compress(src, root / "art-f32"),
            "q4": run_compress(src, root / "art-q4", quantize=True, group=32, precision={})}  # int4 everywhere


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def nothing_written(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


def edit_config(d: Path, fn) -> None:
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def edit_tensors(path: Path, fn) -> None:
    t = st.load_file(path)
    fn(t)
    st.save_file(path, t)


def read_st_header(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_st_header(path: Path, header: dict, data: bytes, hlen: int | None = None) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if hlen is None else hlen) + h + data)


# ------------------------------------------------------------------------------------- isolation ----

_PRELUDE = """
import json, sys, traceback
import numpy as np
import uniql
from pathlib import Path
def _report(fn):
    try:
        fn()
        out = {"ok": True}
    except BaseException as e:
        out = {"ok": False, "type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
               "msg": str(e)}
    print("@@RESULT@@" + json.dumps(out))
"""


def _isolated(body: str, **fmt) -> dict:
    """Runs `body` (which must call _report(fn)) in a fresh interpreter; fails the test on a crash."""
    code = _PRELUDE + textwrap.dedent(body).format(**fmt)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=SUBPROCESS_TIMEOUT_S)
    assert p.returncode == 0, f"subprocess died (rc {p.returncode}):\n{p.stderr[-3000:]}"
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    assert lines, f"no result from the subprocess:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return json.loads(lines[-1][len("@@RESULT@@"):])


def expect_error(res: dict, cls: type, pattern: str) -> None:
    import re

    assert not res["ok"], f"expected {cls.__name__} matching {pattern!r}, but the call succeeded"
    assert cls.__name__ in res["mro"], f"expected {cls.__name__}, got {res['type']}: {res['msg']}"
    assert re.search(pattern, res["msg"]), f"message {res['msg']!r} does not match {pattern!r}"


LOAD = "_report(lambda: uniql.load({path!r}, rate={rate}).logits(np.arange(4)))"
COMPRESS = """
from uniql.compress.pipeline import compress
_report(lambda: compress({src!r}, {out!r}, calibration=np.random.default_rng(0).integers(0, {vocab}, size=({n}, {s})),
                         num_samples={n}, seq_len={s}, quantize=False, progress=False))
"""


def isolated_load(path: Path, rate: float = 0.0) -> dict:
    return _isolated(LOAD, path=str(path), rate=rate)


def isolated_compress(src: Path, out: Path) -> dict:
    return _isolated(COMPRESS, src=str(src), out=str(out), vocab=VOCAB, n=NSAMP, s=SEQ)


# ------------------------------------------------------------------- checkpoint weights (safetensors) ----

@pytest.mark.parametrize("cut", ["in-length-field", "in-header", "in-data", "last-byte"])
def test_truncated_checkpoint(models, tmp_path, cut):
    d = copy(models["src"], tmp_path / "m")
    p = d / "model.safetensors"
    blob = p.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    at = {"in-length-field": 5, "in-header": 8 + n // 2, "in-data": 8 + n + (len(blob) - 8 - n) // 2,
          "last-byte": len(blob) - 1}[cut]
    p.write_bytes(blob[:at])
    expect_error(isolated_load(d), uniql.FormatError, r"model\.safetensors'?: .*(truncated|exceed)")
    out = tmp_path / "out"
    expect_error(isolated_compress(d, out), uniql.FormatError, r"model\.safetensors")
    assert nothing_written(out)


def _shard(d: Path) -> None:
    """Splits model.safetensors into two shards + index (layer 0 + rest, layer 1)."""
    t = st.load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    a = {k: v for k, v in t.items() if not k.startswith("model.layers.1.")}
    b = {k: v for k, v in t.items() if k.startswith("model.layers.1.")}
    st.save_file(d / "model-00001-of-00002.safetensors", a)
    st.save_file(d / "model-00002-of-00002.safetensors", b)
    wmap = {**{k: "model-00001-of-00002.safetensors" for k in a}, **{k: "model-00002-of-00002.safetensors" for k in b}}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


SHARD_CORRUPTIONS = {
    # label: (header edit, header-length override, expected message)
    "header length past the end": (None, "past-end", r"header length \d+ exceeds"),
    "overlapping offsets": ("overlap", None, r"tensors '.*' \[\d+, \d+\] and '.*' \[\d+, \d+\] overlap"),
    "offsets out of range": ("range", None, r"data_offsets \[\d+, \d+\] exceed data size"),
    "shape product overflows int64": ("overflow", None, r"shape \[4611686018427387904, 4611686018427387904\] "
                                                        r"overflows int64"),
    "wrong dtype name": ("dtype", None, r"unknown dtype 'float32'"),
}


@pytest.mark.parametrize("label", list(SHARD_CORRUPTIONS))
def test_corrupt_shard_header(models, tmp_path, label):
    edit, hlen, pattern = SHARD_CORRUPTIONS[label]
    d = copy(models["src"], tmp_path / "m")
    _shard(d)
    p = d / "model-00002-of-00002.safetensors"
    header, data = read_st_header(p)
    a, b = "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"
    if edit == "overlap":
        header[b]["data_offsets"] = list(header[a]["data_offsets"])
    elif edit == "range":
        lo, hi = header[a]["data_offsets"]
        header[a]["data_offsets"] = [lo + len(data), hi + len(data)]
    elif edit == "overflow":
        header[a]["shape"] = [2**62, 2**62]
    elif edit == "dtype":
        header[a]["dtype"] = "float32"
    h = json.dumps(header).encode()
    write_st_header(p, header, data, hlen=8 + len(h) + len(data) if hlen == "past-end" else None)
    res = isolated_load(d)
    expect_error(res, uniql.FormatError, pattern)
    assert "model-00002-of-00002.safetensors" in res["msg"]


# ------------------------------------------------------------------------ checkpoint consistency ----

def test_checkpoint_shape_disagrees_with_config(models, tmp_path):
    d = copy(models["src"], tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t.update(
        {"model.layers.1.mlp.gate_proj.weight": t["model.layers.1.mlp.gate_proj.weight"][:100].copy()}))
    expect_error(isolated_load(d), uniql.ShapeError, r"layer 1 .*(gate|up)_proj.*shape")
    out = tmp_path / "out"
    # (compress builds one-layer models, so its message says "layer 0" for layer 1: reported, not asserted)
    with pytest.raises(uniql.ShapeError, match=r"(gate|up)_proj: weight shape"):
        run_compress(d, out)
    assert not out.exists()


MISSING = ["model.layers.1.self_attn.k_proj.weight", "model.norm.weight"]


@pytest.mark.parametrize("name", MISSING)
def test_missing_tensor_is_named(models, tmp_path, name):
    d = copy(models["src"], tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing tensor '{name}'"):
        uniql.load(d)
    out = tmp_path / "out"
    with pytest.raises((ValueError, KeyError), match=name.replace(".1.", ".[01].")):
        run_compress(d, out)
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "index"])
def test_missing_tensor_is_format_error_and_writes_nothing(models, tmp_path, where):
    name = "model.layers.1.self_attn.k_proj.weight"
    d = copy(models["src"], tmp_path / "m")
    if where == "file":
        edit_tensors(d / "model.safetensors", lambda t: t.pop(name))
    else:  # the index omits a tensor that its shard holds (read_tensors follows the index)
        _shard(d)
        idx = json.loads((d / "model.safetensors.index.json").read_text())
        del idx["weight_map"][name]
        (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(uniql.FormatError, match=name):
        uniql.load(d)
    out = tmp_path / "out"
    with pytest.raises(uniql.FormatError, match=name):
        run_compress(d, out)
    assert nothing_written(out)


@pytest.mark.parametrize("key,value", [("hidden_size", 65), ("num_attention_heads", 0), ("num_hidden_layers", 3)])
def test_inconsistent_config_is_uniql_error(models, tmp_path, key, value):
    d = copy(models["src"], tmp_path / "m")
    edit_config(d, lambda c: c.__setitem__(key, value))
    with pytest.raises(uniql.UniqlError):
        uniql.load(d)


def test_unknown_architecture_through_load(tmp_path):
    d = write_checkpoint(tmp_path / "m", tensors={"w": np.zeros(1, np.float32)},
                         cfg={"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]})
    with pytest.raises(uniql.UnsupportedError, match="model_type 'gpt_neox' is not supported"):
        uniql.load(d)
    with pytest.raises(uniql.UnsupportedError, match="gpt_neox"):
        run_compress(d, tmp_path / "out")
    assert nothing_written(tmp_path / "out")


def test_non_utf8_tokenizer_in_compress_writes_nothing(models, tmp_path):
    d = copy(models["src"], tmp_path / "m")
    (d / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": "caf\xe9"}')
    out = tmp_path / "out"
    with pytest.raises(uniql.FormatError, match=r"tokenizer.json.* is not valid UTF-8 \(byte 32\)"):
        run_compress(d, out)
    assert nothing_written(out)
    with pytest.raises(uniql.FormatError, match="not valid UTF-8"):
        uniql.load(d)


# ------------------------------------------------------------------------------ NaN / Inf weights ----

NONFINITE = {
    "nan in mlp weight": ("model.layers.1.mlp.up_proj.weight", (3, 5), np.nan),
    "inf in attention weight": ("model.layers.0.self_attn.v_proj.weight", (0, 0), np.inf),
}


@pytest.mark.parametrize("label", list(NONFINITE))
def test_compress_refuses_nonfinite_weights(models, tmp_path, label):
    name, idx, value = NONFINITE[label]
    d = copy(models["src"], tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t[name].__setitem__(idx, value))
    out = tmp_path / "out"
    with pytest.raises(uniql.NumericError, match="NaN|Inf"):
        run_compress(d, out)
    assert not out.exists()


@pytest.mark.parametrize("label", [*NONFINITE, "nan in an unused embedding row"])
def test_compress_names_nonfinite_tensor_before_writing(models, tmp_path, label):
    if label in NONFINITE:
        name, idx, value = NONFINITE[label]
    else:
        unused = sorted(set(range(VOCAB)) - set(calib().ravel().tolist()))[0]
        name, idx, value = "model.embed_tokens.weight", (unused, 0), np.nan
    d = copy(models["src"], tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t[name].__setitem__(idx, value))
    out = tmp_path / "out"
    with pytest.raises(uniql.NumericError, match=name):
        run_compress(d, out)
    assert nothing_written(out)


# -------------------------------------------------------------------------------------- artifacts ----

@pytest.mark.parametrize("which,file", [("q4", "model-layer-0001.safetensors"), ("f32", "model-layer-0000.safetensors"),
                                        ("q4", "model-rest.safetensors")])
def test_truncated_artifact_file(models, tmp_path, which, file):
    a = copy(models[which], tmp_path / "a")
    blob = (a / file).read_bytes()
    (a / file).write_bytes(blob[: len(blob) * 2 // 3])
    expect_error(isolated_load(a, 0.2), uniql.FormatError, file.replace(".", r"\.") + ".*exceed data size")


def test_missing_artifact_file(models, tmp_path):
    a = copy(models["f32"], tmp_path / "a")
    (a / "model-layer-0001.safetensors").unlink()
    with pytest.raises(uniql.FormatError, match="artifact is missing model-layer-0001.safetensors"):
        uniql.load(a)
    a = copy(models["f32"], tmp_path / "b")
    (a / "model-rest.safetensors").unlink()
    with pytest.raises(uniql.FormatError, match="artifact is missing model-rest.safetensors"):
        uniql.load(a)


def test_artifact_meta_errors(models, tmp_path):
    cases = [
        (lambda u: u.update(format_version=7, new_field=1), uniql.UnsupportedError, "format version 7 is newer"),
        (lambda u: u.update(format_version="1"), uniql.FormatError, "format_version must be a positive integer"),
        (lambda u: u.update(format_version=0), uniql.FormatError, "format_version must be a positive integer"),
        (lambda u: u.update(architecture="gpt2"), uniql.UnsupportedError, "architecture 'gpt2'"),
        (lambda u: u.update(architecture="mamba2"), uniql.FormatError, "'mamba2' does not match model_type 'llama'"),
        (lambda u: u.update(importance=[0.1]), uniql.FormatError, "importance has 1 entries, the model has 2"),
        (lambda u: u.update(max_rate=0.99), uniql.FormatError, "max_rate 0.99 outside"),
        (lambda u: u.update(attn_granularity=3), uniql.FormatError, "attn_granularity must be even"),
        (lambda u: u.pop("importance"), uniql.FormatError, "importance"),
    ]
    for i, (fn, exc, pattern) in enumerate(cases):
        a = copy(models["f32"], tmp_path / f"a{i}")
        edit_config(a, lambda c: fn(c["uniql"]))
        with pytest.raises(exc, match=pattern):
            uniql.load(a, rate=0.2)


def test_tensor_table_disagreements_caught(models, tmp_path):
    # int4: the table's shape is checked against the packed codes and scales
    a = copy(models["q4"], tmp_path / "a")
    edit_config(a, lambda c: c["uniql_tensors"]["model.layers.0.mlp.gate_proj"].update(shape=[96, HIDDEN]))
    expect_error(isolated_load(a), uniql.FormatError, r"gate_proj.* has shape \(96, 64\), the config implies \(128, 64\)")
    # a missing table entry
    a = copy(models["f32"], tmp_path / "b")
    edit_config(a, lambda c: c["uniql_tensors"].pop("model.layers.0.mlp.up_proj"))
    with pytest.raises(uniql.FormatError, match="no valid entry for 'model.layers.0.mlp.up_proj'"):
        uniql.load(a)
    # the file's tensors disagree with the model config
    a = copy(models["f32"], tmp_path / "c")
    edit_tensors(a / "model-layer-0000.safetensors", lambda t: t.update(
        {"model.layers.0.mlp.up_proj.weight": t["model.layers.0.mlp.up_proj.weight"][:, :32].copy()}))
    expect_error(isolated_load(a), uniql.FormatError,
                 r"up_proj\.weight has shape \(128, 32\), the uniql_tensors table says \(128, 64\)")
    a = copy(models["q4"], tmp_path / "d")
    edit_tensors(a / "model-layer-0000.safetensors", lambda t: t.update(
        {"model.layers.0.mlp.up_proj.scales": t["model.layers.0.mlp.up_proj.scales"][:, :1].copy()}))
    expect_error(isolated_load(a), uniql.FormatError, r"up_proj\.scales has shape \(128, 1\), the uniql_tensors table implies \(128, 2\)")
    # a RoPE frequency index outside the head
    a = copy(models["f32"], tmp_path / "e")
    edit_tensors(a / "model-layer-0000.safetensors",
                 lambda t: t["model.layers.0.self_attn.rope_freq"].__setitem__((0, 0), 10**6))
    expect_error(isolated_load(a), uniql.RangeError, r"freq_map\[0\]\[0\] = 1000000 outside \[0, 8\)")
    # int4 codes stored with the wrong dtype
    a = copy(models["q4"], tmp_path / "f")
    edit_tensors(a / "model-layer-0000.safetensors", lambda t: t.update(
        {"model.layers.0.mlp.up_proj.qweight": t["model.layers.0.mlp.up_proj.qweight"].view(np.int8).copy()}))
    expect_error(isolated_load(a), uniql.FormatError, r"up_proj\.qweight.* has dtype int8; expected uint8")


@pytest.mark.parametrize("edit", ["float shape", "unknown format"])
def test_tensor_table_disagreement_float(models, tmp_path, edit):
    a = copy(models["f32"], tmp_path / "a")
    spec = {"float shape": {"shape": [96, HIDDEN]}, "unknown format": {"format": "q8"}}[edit]
    edit_config(a, lambda c: c["uniql_tensors"]["model.layers.0.mlp.gate_proj"].update(spec))
    expect_error(isolated_load(a), uniql.FormatError, "gate_proj")


@pytest.mark.parametrize("name", ["model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.scales"])
def test_artifact_wrong_float_dtype(models, tmp_path, name):
    a = copy(models["q4"], tmp_path / "a")
    edit_tensors(a / "model-layer-0000.safetensors", lambda t: t.update({name: t[name].astype(np.float64)}))
    expect_error(isolated_load(a), uniql.FormatError, name.replace(".", r"\."))


@pytest.mark.parametrize("bad", ["nan", "inf", "beyond float16"])
def test_artifact_bad_scales_are_named(models, tmp_path, bad):
    """The runtime keeps int4 / int8 scales in float16: a NaN / Inf scale, or a float32 one beyond float16's range,
    in an artifact is a FormatError naming the tensor (not a model that computes NaN)."""
    name = "model.layers.0.mlp.up_proj.scales"
    a = copy(models["q4"], tmp_path / "a")

    def edit(t):
        s = t[name].astype(np.float32)
        s[1, 0] = {"nan": np.nan, "inf": np.inf, "beyond float16": 1e6}[bad]
        t[name] = s if bad == "beyond float16" else s.astype(np.float16)

    edit_tensors(a / "model-layer-0000.safetensors", edit)
    expect_error(isolated_load(a), uniql.FormatError, name.replace(".", r"\.") + r".*not a finite float16")


# ------------------------------------------------------------------------------------------- GGUF ----

def write_tiny_gguf(path: Path) -> Path:
    """A complete 1-layer llama GGUF (float32 tensors) whose only possible defect is what a test does to it."""
    import gguf

    cfg = dict(tiny_config(), num_hidden_layers=1, tie_word_embeddings=True)
    inv = {v: k for k, v in convert._LAYER_NAMES.items()}
    ginv = {v: k for k, v in convert._GLOBAL_NAMES.items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    rng = np.random.default_rng(0)
    for name, shape in convert._expected_shapes(cfg).items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            gname = f"blk.{i}.{inv[mod]}.{suffix}"
        else:
            base, suffix = name.rsplit(".", 1)
            gname = f"{ginv[base]}.{suffix}"
        w.add_tensor(gname, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_or_foreign_gguf(tmp_path):
    good = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert (convert.convert_gguf(good, tmp_path / "ok") / "model.safetensors").is_file()
    blob = good.read_bytes()
    st.save_file(tmp_path / "w.safetensors", {"w": np.zeros(4, np.float32)})
    cases = {"empty": b"", "magic only": blob[:4], "in the header": blob[:20], "in the metadata": blob[:300],
             "in the tensor data": blob[: len(blob) // 2], "last byte missing": blob[:-1],
             "a safetensors file": (tmp_path / "w.safetensors").read_bytes()}
    bad = tmp_path / "bad.gguf"
    before = sorted(p.name for p in tmp_path.iterdir()) + ["bad.gguf"]
    for label, data in cases.items():
        bad.write_bytes(data)
        with pytest.raises(uniql.FormatError, match=r"bad\.gguf' is not a readable GGUF file"):
            convert.convert_gguf(bad, tmp_path / "out")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before), f"{label}: output left behind"


# ------------------------------------------------------------------------ artifact config fuzzing ----

_MUTATE = """
import copy, math, random, shutil, resource
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))   # a runaway allocation fails instead of swapping
src = Path({art!r}); work = Path({work!r})
base = json.loads((src / "config.json").read_text())
rng = random.Random({seed})
POOL = [None, True, False, 0, 1, -1, 2, 3, 7, 2**31, 2**63, -2**63, 1e308, -0.5, 0.35, float("nan"), float("inf"),
        "", "x", "llama", "q4", "f32", [], {{}}, [1, 2], [0.1] * 3, {{"a": 1}}]

def paths(o, pre=()):
    yield pre
    if isinstance(o, dict):
        for k, v in o.items():
            yield from paths(v, pre + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from paths(v, pre + (i,))

def mutate(cfg):
    # weight the artifact-specific sections: they are what only uniql parses
    for _ in range(rng.choice((1, 1, 2, 3))):
        ps = [p for p in paths(cfg) if p]
        hot = [p for p in ps if p[0] in ("uniql", "uniql_tensors")]
        p = rng.choice(hot if hot and rng.random() < 0.7 else ps)
        parent = cfg
        for k in p[:-1]:
            parent = parent[k]
        r = rng.random()
        if r < 0.2 and isinstance(parent, dict):
            del parent[p[-1]]
        elif r < 0.35 and isinstance(parent[p[-1]], (int, float)) and not isinstance(parent[p[-1]], bool):
            v = parent[p[-1]]
            parent[p[-1]] = rng.choice((v * 2, v // 2 if isinstance(v, int) else v / 2, -v, v + 1, v - 1))
        else:
            parent[p[-1]] = copy.deepcopy(rng.choice(POOL))
        if rng.random() < 0.1:
            break
    return cfg

bad = []
ok = err = 0
for it in range({iters}):
    cfg = mutate(copy.deepcopy(base))
    art = work / "a"
    if not art.exists():
        shutil.copytree(src, art)
    text = json.dumps(cfg)
    if rng.random() < 0.1:                       # byte-level damage of the text too
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        (art / "config.json").write_bytes(bytes(b))
    else:
        (art / "config.json").write_text(text)
    rate = rng.choice((0.0, 0.1, 0.2, 0.35))
    try:
        uniql.load(art, rate=rate).logits(np.arange(4))
        ok += 1
    except uniql.UniqlError:
        err += 1
    except Exception as e:
        bad.append({{"it": it, "type": type(e).__name__, "msg": str(e)[:200],
                     "where": traceback.extract_tb(e.__traceback__)[-1].filename.rsplit("/", 1)[-1]}})
print("@@RESULT@@" + json.dumps({{"ok": ok, "uniql_errors": err, "other": bad}}))
"""


@pytest.fixture(scope="module")
def mutation_run(models, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("mutate")
    code = _PRELUDE + textwrap.dedent(_MUTATE).format(art=str(models["q4"]), work=str(work), seed=MUTATION_SEED,
                                                      iters=MUTATION_ITERS)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=SUBPROCESS_TIMEOUT_S)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    return {"rc": p.returncode, "stderr": p.stderr[-3000:],
            "result": json.loads(lines[-1][len("@@RESULT@@"):]) if lines else None}


def test_artifact_config_mutations_never_crash(mutation_run):
    assert mutation_run["rc"] == 0 and mutation_run["result"] is not None, \
        f"the mutation run died (rc {mutation_run['rc']}):\n{mutation_run['stderr']}"
    r = mutation_run["result"]
    assert r["ok"] + r["uniql_errors"] + len(r["other"]) == MUTATION_ITERS
    assert r["uniql_errors"] > MUTATION_ITERS // 4, r  # the mutations do reach the validation


def test_artifact_config_mutations_raise_only_uniql_errors(mutation_run):
    r = mutation_run["result"]
    assert r is not None
    summary = sorted({(b["type"], b["where"], b["msg"][:80]) for b in r["other"]})
    assert not r["other"], "\n".join(map(str, summary))
