"""uniql.compress and the elastic artifact on small random-weight Llama/Qwen2 models (transformers as oracle)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql.formats.artifact import REST_FILE, layer_file
from uniql.compress.pipeline import OutputExistsError, compress

from _helpers import assert_rate_round_trip_keeps_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
SORTED_REL_TOL = 1e-4      # sorting alone (no pruning, no quantization) preserves the function
VOCAB, SEQ, NSAMP = 256, 32, 8


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _make(tmp: Path, kind: str, tied: bool = False) -> tuple[Path, object]:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=tied)
    if kind == "llama":
        cfg = transformers.LlamaConfig(head_dim=16, **common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # random q/k/v biases (zero-initialised otherwise)
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.5)
    model.eval()
    d = tmp / f"{kind}{'-tied' if tied else ''}"
    model.save_pretrained(d)
    return d, model


def _calib(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(NSAMP, SEQ))


def _compress(src: Path, out: Path, **kw) -> Path:
    kw.setdefault("quantize", False)
    return compress(src, out, calibration=_calib(), num_samples=NSAMP, seq_len=SEQ, progress=False, **kw)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    src, model = _make(tmp, "llama")
    # int4 everywhere (precision={}): these tests are about GPTQ, and quantize_artifact takes no policy
    return src, model, _compress(src, tmp / "fp32"), _compress(src, tmp / "int4", quantize=True, precision={})


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_sorting_preserves_function(tmp_path, kind, tied):
    assert uniql.compress.entry_point() is compress  # calling the package runs the function (the API of the README)
    src, model = _make(tmp_path, kind, tied)
    out = _compress(src, tmp_path / "art")
    ids = np.random.default_rng(1).integers(0, VOCAB, size=24)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].numpy()
    m = uniql.load(out, kv_dtype="fp32")
    assert _rel(m.logits(ids), ref) <= SORTED_REL_TOL


@pytest.mark.parametrize("which", ["fp32", "int4"])
@pytest.mark.parametrize("rate", [0.15, 0.25, 0.35])
def test_load_at_rate_equals_set_rate(llama, which, rate):
    art = llama[2] if which == "fp32" else llama[3]
    ids = np.random.default_rng(2).integers(0, VOCAB, size=20)
    full = uniql.load(art, rate=0.0)
    full.set_rate(rate)
    assert full.rate == rate
    a = uniql.load(art, rate=rate).logits(ids)
    b = full.logits(ids)
    np.testing.assert_array_equal(a, b)


def test_live_rate_switch_between_tokens(llama):
    """The rate changes between tokens without touching the KV cache: switching to 0.35 and back before the
    next tokens gives exactly the never-switched result, and decoding at 0.35 uses the smaller sizes."""
    art = llama[3]
    ids = np.random.default_rng(3).integers(0, VOCAB, size=12)
    m = uniql.load(art, rate=0.0)
    unswitched = assert_rate_round_trip_keeps_state(m, ids, 8)
    m.reset()
    m.forward(ids[:8])
    m.set_rate(0.35)
    assert [m.keep(i) for i in range(3)] == m.keep_sizes(0.35)
    switched = m.forward(ids[8:])
    assert switched.shape == unswitched.shape and not np.array_equal(switched, unswitched)


def test_higher_rate_never_more_parameters(llama):
    art = llama[3]
    counts, mems = [], []
    for rate in (0.0, 0.05, 0.15, 0.25, 0.35):
        m = uniql.load(art, rate=rate, max_seq=64)
        counts.append(m.parameter_count())
        mems.append(m.weight_bytes())
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert mems == sorted(mems, reverse=True) and mems[0] > mems[-1]


def test_reported_sizes_match_bytes(llama):
    for art in llama[2:]:
        report = json.loads((art / "uniql_report.json").read_text())
        for name, size in report["bytes"].items():
            assert (art / name).stat().st_size == size
        assert set(report["bytes"]) == {layer_file(i) for i in range(3)} | {REST_FILE}
    # int4 weights are about 4.5 bits (scales included): far smaller than fp32
    fp = sum(p.stat().st_size for p in llama[2].glob("model-*.safetensors"))
    q4 = sum(p.stat().st_size for p in llama[3].glob("model-*.safetensors"))
    assert q4 < fp / 4


def test_int4_close_to_fp32(llama):
    """int4 artifact at rate 0 stays close to the sorted fp32 model (a loose sanity bound on random weights)."""
    ids = np.random.default_rng(4).integers(0, VOCAB, size=16)
    a = uniql.load(llama[2]).logits(ids)
    b = uniql.load(llama[3]).logits(ids)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_rate_out_of_range(llama):
    with pytest.raises(uniql.RangeError, match="outside \\[0, 0.35\\]"):
        uniql.load(llama[2], rate=0.5)
    m = uniql.load(llama[2], rate=0.25)
    with pytest.raises(uniql.RangeError, match="below the rate this model was loaded at"):
        m.set_rate(0.15)
    with pytest.raises(uniql.RangeError, match="outside"):
        m.set_rate(0.9)


def test_bad_inputs_write_nothing(tmp_path, llama):
    src = llama[0]
    # calibration shorter than one sequence
    out = tmp_path / "short"
    with pytest.raises(ValueError, match="fewer than one sequence"):
        compress(src, out, calibration=np.arange(10), seq_len=SEQ, progress=False)
    assert not out.exists() and not (tmp_path / "short.partial").exists()
    # existing non-empty output directory
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not empty"):
        _compress(src, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # unsupported architecture
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(uniql.UnsupportedError, match="gpt2"):
        _compress(bad, tmp_path / "gpt2-out")
    assert not (tmp_path / "gpt2-out").exists()
    # max_rate out of range
    with pytest.raises(uniql.RangeError, match="max_rate"):
        _compress(src, tmp_path / "r", max_rate=0.9)
    assert not (tmp_path / "r").exists()


def test_future_artifact_version(tmp_path, llama):
    import shutil

    art = tmp_path / "future"
    shutil.copytree(llama[2], art)
    cfg = json.loads((art / "config.json").read_text())
    cfg["uniql"]["format_version"] = 99
    (art / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(uniql.UnsupportedError, match="format version 99 is newer"):
        uniql.load(art)


def test_ablations_run_and_differ(tmp_path, llama):
    src = llama[0]
    a = _compress(src, tmp_path / "mag", scorer="magnitude")
    b = _compress(src, tmp_path / "split", split_sigma=True)
    ids = np.random.default_rng(5).integers(0, VOCAB, size=16)
    base = uniql.load(llama[2], kv_dtype="fp32").logits(ids)
    # at rate 0 every variant is the same function ...
    for art in (a, b):
        assert _rel(uniql.load(art, kv_dtype="fp32").logits(ids), base) <= SORTED_REL_TOL
    # ... but pruned they keep different channels
    assert not np.array_equal(uniql.load(a, rate=0.35).logits(ids), uniql.load(llama[2], rate=0.35).logits(ids))


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "qwen2", "llama-default-policy", "llama-tied-default-policy"])
def test_int4_equals_quantize_artifact_of_fp32(tmp_path, llama, kind):
    """compress(quantize=True) = quantize_artifact(compress(quantize=False)) with the same calibration, byte for
    byte: sorting and block importance come from the float model, GPTQ Hessians from the quantized stream (one
    shared per-layer quantize step). Only config.json's quantization record differs (it names the two-step path)."""
    from uniql.compress.requantize import quantize_artifact

    default = kind.endswith("-default-policy")  # compress's default policy (int8 / int4 g64) on both paths
    kind = kind.replace("-default-policy", "")
    if kind == "llama" and not default:
        src, _, fp, q = llama
    else:
        src, _ = _make(tmp_path, kind.split("-")[0], tied=kind.endswith("-tied"))
        fp = _compress(src, tmp_path / "fp32")
        q = _compress(src, tmp_path / "int4", quantize=True, **({} if default else {"precision": {}}))
    two = quantize_artifact(fp, tmp_path / "two-step", calibration=_calib(), num_samples=NSAMP, seq_len=SEQ,
                            progress=False, **({} if default else {"precision": {}}))
    if default:
        info = json.loads((two / "config.json").read_text())["uniql_tensors"]
        assert any(s.get("format") == "q8" for s in info.values())
        tied = kind.endswith("-tied")  # the tied table in int8 (with the final mix); an untied head stays int4
        assert info["model.embed_tokens"]["format"] == ("q8" if tied else "q4")
        assert ("lm_head" not in info) if tied else info["lm_head"]["format"] == "q4"
    for name in [layer_file(i) for i in range(3)] + [REST_FILE]:
        assert (q / name).read_bytes() == (two / name).read_bytes(), name
    cq, c2 = (json.loads((d / "config.json").read_text()) for d in (q, two))
    assert cq["uniql_tensors"] == c2["uniql_tensors"]
    assert cq["uniql"]["importance"] == c2["uniql"]["importance"]
    assert cq["uniql"]["importance"] == json.loads((fp / "config.json").read_text())["uniql"]["importance"]


def test_refit_option_same_on_both_paths(tmp_path, llama):
    """compress(refit=2) = quantize_artifact(refit=2) byte for byte (the re-fit is part of the shared GPTQ step),
    recorded in the quantization record; the codes are GPTQ's or better by its objective, the scales differ."""
    from uniql.compress.requantize import quantize_artifact

    src, _, fp, q0 = llama
    q = _compress(src, tmp_path / "int4", quantize=True, precision={}, refit=2)
    two = quantize_artifact(fp, tmp_path / "two-step", calibration=_calib(), num_samples=NSAMP, seq_len=SEQ,
                            progress=False, precision={}, refit=2)
    for name in [layer_file(i) for i in range(3)] + [REST_FILE]:
        assert (q / name).read_bytes() == (two / name).read_bytes(), name
    rec = json.loads((q / "config.json").read_text())["uniql"]["quantization"]
    assert rec["refit"] == 2 and "refit" not in json.loads((q0 / "config.json").read_text())["uniql"]["quantization"]
    assert (q / layer_file(1)).read_bytes() != (q0 / layer_file(1)).read_bytes()
    ids = np.random.default_rng(5).integers(0, VOCAB, size=16)
    assert np.all(np.isfinite(uniql.load(q, rate=0.35).logits(ids)))


_KILL_SCRIPT = """
import sys, numpy as np
from uniql.compress.pipeline import compress
compress(sys.argv[1], sys.argv[2], calibration=np.random.default_rng(0).integers(0, {vocab}, size=({n}, {s})),
         num_samples={n}, seq_len={s}, quantize=True, progress=False, resume=len(sys.argv) > 3)
"""


@pytest.mark.parametrize("kill_after", [0, 1, 3], ids=["first-layer", "mid", "final-write"])
def test_sigkill_then_resume_is_identical(tmp_path, llama, kill_after):
    """SIGKILL at several points (while layer 0 runs, after a finished layer, while the embedding / lm_head /
    config are written) never leaves a loadable artifact, and resume=True reproduces the uninterrupted artifact
    byte for byte."""
    src = llama[0]
    out, ref_art = tmp_path / "killed", tmp_path / "reference"
    # more calibration than the other tests, so that each stage lasts long enough to be interrupted
    script = _KILL_SCRIPT.format(vocab=VOCAB, n=4 * NSAMP, s=2 * SEQ)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    subprocess.run([sys.executable, "-c", script, str(src), str(ref_art)], env=env, check=True)
    proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(out)], env=env)
    part = out.with_name(out.name + ".partial")
    progress = part / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if kill_after == 0 and part.is_dir():
            break
        if kill_after > 0 and progress.is_file():
            try:
                done = json.loads(progress.read_text() or "{}").get("done", 0)
            except json.JSONDecodeError:
                done = 0
            if done >= kill_after:
                break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("compression finished before it could be interrupted")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a loadable artifact"
    with pytest.raises(uniql.UniqlError):
        uniql.load(out)
    subprocess.run([sys.executable, "-c", script, str(src), str(out), "resume"], env=env, check=True)
    assert not part.exists()
    for name in [layer_file(i) for i in range(3)] + [REST_FILE, "config.json"]:
        assert (out / name).read_bytes() == (ref_art / name).read_bytes(), name


def _word_tokenizer(d: Path) -> list[str]:
    """A word-level tokenizer.json over VOCAB words w0..w{VOCAB-1} saved into d; returns the words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    return words


def test_cli_compress_text_calibration_then_generate(tmp_path, llama, capsys):
    import shutil

    from uniql.cli import main

    src = tmp_path / "src"
    shutil.copytree(llama[0], src)
    words = _word_tokenizer(src)
    rng = np.random.default_rng(7)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(rng.choice(words, size=NSAMP * SEQ + 5)))
    out = tmp_path / "cli-art"
    rc = main(["compress", str(src), "-o", str(out), "--file", str(text), "--samples", str(NSAMP),
               "--seq-len", str(SEQ), "--no-quantize"])
    assert rc == 0 and (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert main(["generate", str(out), "w1 w2 w3", "--max-new-tokens", "4", "--rate", "0.25"]) == 0
    assert capsys.readouterr().out.strip().split()[-1].startswith("w")
    # a second run into the same directory refuses, one line, exit 2
    rc = main(["compress", str(src), "-o", str(out), "--file", str(text), "--samples", "2", "--seq-len", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and "exists and is not empty" in err and len(err.strip().splitlines()) == 1


def test_gptq_in_row_chunks_equals_one_call(monkeypatch):
    """compress quantizes tall weights (lm_head) in row blocks to bound the float64 workspace: identical codes."""
    import importlib

    from uniql.compress.quant import quantize_gptq

    cm = importlib.import_module("uniql.compress.steps")

    rng = np.random.default_rng(8)
    X = rng.standard_normal((256, 48)).astype(np.float32)
    H = (X.T.astype(np.float64) @ X.astype(np.float64)) / 256
    W = rng.standard_normal((50, 48)).astype(np.float32)
    monkeypatch.setattr(cm, "GPTQ_ROW_CHUNK", 16)
    a, b = cm.gptq_blocks(W, H, 16, 0.01), quantize_gptq(W, H, group=16, damp=0.01)
    np.testing.assert_array_equal(a.packed, b.packed)
    np.testing.assert_array_equal(a.scales, b.scales)


def test_int4_artifact_does_not_depend_on_activation_mode(tmp_path, llama):
    """GPTQ's quantized stream runs through int4 linears: compress pins fp32 activations, so an artifact made
    while the process default is W4A8 (int8 activations) equals the fixture's byte for byte, and the caller's
    mode is restored afterwards."""
    import uniql
    from uniql import _C

    src, _, _, q = llama
    with uniql.int4_activations("int8"):
        again = _compress(src, tmp_path / "int4-a8-default", quantize=True, precision={})
        assert _C.kernels_info()["q4_act"] == "int8"
    for name in [layer_file(i) for i in range(3)] + [REST_FILE]:
        assert (again / name).read_bytes() == (q / name).read_bytes(), name


def test_int4_activation_modes_at_runtime(llama):
    """W4A8 (int8 activations) stays within a few percent of W4A32 on the int4 artifact's logits; the mode API
    validates its argument and restores the previous mode on an exception."""
    import uniql
    from uniql import _C
    from uniql.errors import InvalidArgumentError

    _, _, _, q = llama
    ids = np.random.default_rng(3).integers(0, VOCAB, 24).astype(np.int32)
    out = {}
    for mode in ("fp32", "int8"):
        with uniql.int4_activations(mode) as now:
            assert now == mode
            m = uniql.load(q, rate=0.15)
            out[mode] = m.forward(ids).copy()
    assert 0 < _rel(out["int8"], out["fp32"]) < 0.05
    before = _C.kernels_info()["q4_act"]
    with pytest.raises(InvalidArgumentError, match="int4 activations"):
        uniql.set_int4_activations("int4")
    with pytest.raises(RuntimeError):
        with uniql.int4_activations("fp32" if before == "int8" else "int8"):
            raise RuntimeError("boom")
    assert _C.kernels_info()["q4_act"] == before
    info = _C.kernels_info()
    with uniql.int4_activations("auto") as now:
        assert now == ("int8" if info["avx2"] or info["avx512"] else "fp32")


def test_cli_ppl_int4_activations(tmp_path, llama, capsys):
    """``uniql ppl --int4-activations fp32|int8`` on the int4 artifact: both finite, not equal (W4A8 quantizes the
    activations), within a few percent of each other."""
    import shutil

    from uniql import _C
    from uniql.cli import main

    art = tmp_path / "art"
    shutil.copytree(llama[3], art)
    words = _word_tokenizer(art)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(np.random.default_rng(9).choice(words, size=200)))
    before = _C.kernels_info()["q4_act"]
    ppl = {}
    try:
        for mode in ("fp32", "int8"):
            assert main(["ppl", str(art), "--file", str(text), "--window", "64", "--int4-activations", mode]) == 0
            ppl[mode] = float(capsys.readouterr().out.split()[1])
    finally:
        _C.kernels_set_q4_act(before)
    assert all(np.isfinite(v) for v in ppl.values()) and ppl["fp32"] != ppl["int8"]
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.05
