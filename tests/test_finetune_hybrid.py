"""Recovery fine-tuning of Mamba2 / Nemotron-H / Bamba artifacts (uniql.finetune.twin, uniql.finetune,
uniql.compress.requantize) on small random-weight models.

The twin against the C runtime at every rate and keep, and the gradient masks, for every family:
tests/test_twin.py. Here: full RoPE from a float16 artifact, the SSD scan against the recurrence; the fine-tuned
artifact must load, switch rates and equal the twin with its patches; quantize_artifact of an
untuned float32 artifact must be byte-identical to compress(quantize=True).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql.formats import safetensors as st
from uniql.formats.artifact import REST_FILE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_finetune import (_logits, _one_thread, _rel, check_one_and_two_processes,  # noqa: E402,F401
                           check_tuned_artifact)  # (_one_thread: the autouse one-thread fixture)
from test_ssm import ARCHS, make_hf  # noqa: E402  (small random HF models of each architecture, chunk 8)
from uniql.finetune import finetune  # noqa: E402
from uniql.finetune.twin import load_twin, ssd_scan  # noqa: E402

# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
RUNTIME_REL_TOL = 1e-5   # twin vs C runtime, float32 (measured <= 7.2e-7: other summation orders, chunked SSD both)
SCAN_REL_TOL = 1e-5      # chunked SSD vs the float64 recurrence
VOCAB, SEQ, NSAMP = 128, 24, 4


def _calib() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))


def _compress(src: Path, out: Path, **kw) -> Path:
    return uniql.compress(src, out, calibration=_calib(), num_samples=NSAMP, seq_len=SEQ, progress=False, **kw)


@pytest.fixture(scope="module", params=ARCHS)
def hy(request, tmp_path_factory):
    """(arch, source checkpoint, float32 artifact)."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"fth-{arch}")
    hf, _, _ = make_hf(arch)
    src = tmp / "src"
    hf.save_pretrained(src)
    return arch, src, _compress(src, tmp / "fp32", quantize=False)


def tm_names(art: Path) -> list[dict[str, str]]:
    """Per layer, the linears that carry a patch: in/out (Mamba), q/k/v/o, gate/up/down."""
    return load_twin(art, max_seq=2).names


def _pattern_tokens(n: int = 2048, seed: int = 0) -> np.ndarray:
    period = np.random.default_rng(seed).integers(0, VOCAB, size=24)
    return np.tile(period, n // 24 + 1)[:n]


def test_twin_full_rope_float16_artifact(tmp_path):
    """Attention with full RoPE (a Bamba variant: partial_rotary_factor 1) from a float16 artifact."""
    src = tmp_path / "src"
    hf, _, _ = make_hf("bamba", seed=2, rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                                                          "rope_type": "default"})
    hf.save_pretrained(src)
    art = _compress(src, tmp_path / "f16", quantize=False, dtype="float16")
    tm = load_twin(art, max_seq=32)
    assert tm.rope == "full"
    ids = np.random.default_rng(2).integers(0, VOCAB, size=20)
    for rate in (0.0, 0.35):
        tm.set_rate(rate)
        assert _rel(_logits(tm, ids), uniql.load(art, rate=rate, kv_dtype="fp32").logits(ids)) <= RUNTIME_REL_TOL, rate


def test_ssd_scan_equals_the_recurrence():
    """The chunked SSD form (chunks of 5 over 13 tokens, a carried-in state, 4 heads on 2 groups) against the
    recurrence S_t = exp(Delta_t A) S_{t-1} + Delta_t x_t B_t^T, y_t = S_t C_t + D x_t in float64."""
    g = torch.Generator().manual_seed(0)
    b, T, H, P, G, N = 2, 13, 4, 3, 2, 5
    x, B, C = (torch.randn(b, T, H, P, generator=g), torch.randn(b, T, G, N, generator=g),
               torch.randn(b, T, G, N, generator=g))
    dt = torch.rand(b, T, H, generator=g) * 0.5
    A, D = -torch.rand(H, generator=g) - 0.1, torch.randn(H, generator=g)
    S0 = torch.randn(b, H, P, N, generator=g)
    y, S = ssd_scan(x, dt, A, B, C, D, 5, S0)
    Sd, ys = S0.double(), []
    Bh, Ch = B.double().repeat_interleave(2, 2), C.double().repeat_interleave(2, 2)
    for t in range(T):
        dA = torch.exp(dt[:, t].double() * A.double())[:, :, None, None]
        Sd = dA * Sd + (dt[:, t].double()[:, :, None, None] * x[:, t].double()[..., None] * Bh[:, t, :, None, :])
        ys.append(torch.einsum("bhpn,bhn->bhp", Sd, Ch[:, t]) + D.double()[:, None] * x[:, t].double())
    assert _rel(y.numpy(), torch.stack(ys, 1).numpy()) <= SCAN_REL_TOL
    assert _rel(S.numpy(), Sd.numpy()) <= SCAN_REL_TOL


# ------------------------------------------------------------------------------------- training ----
def test_finetune_writes_a_working_hybrid_artifact(tmp_path, hy):
    """finetune() (ce) end to end: the artifact loads at a rate, set_rate works, the C runtime computes what the
    saved patches compute in the twin, the weights changed; merge_lora of the saved patches writes the same
    files; the merged artifact keeps the source's tensor table."""
    arch, _, art = hy
    out = finetune(art, tmp_path / "ft", calibration=_pattern_tokens(), steps=6, lr=5e-3, seq_len=32, batch=2,
                   eval_every=3, eval_windows=4, save_lora_to=tmp_path / "l.st", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    rec = cfg["uniql"]["finetune"]
    assert rec["method"] == "masked-lora" and rec["steps"] == 6 and rec["loss"] == "ce"
    assert cfg["uniql_tensors"] == json.loads((art / "config.json").read_text())["uniql_tensors"]
    state, lrec, _, _ = check_tuned_artifact(art, out, tmp_path / "l.st", tmp_path / "merged", VOCAB)
    assert lrec == rec
    assert set(state) == {f"l{i}_{s}.{f}" for i, names in enumerate(tm_names(art)) for s in names for f in "AB"}


# ------------------------------------------------------------------------------------- int4 ----
def test_quantize_artifact_is_compress_byte_for_byte(tmp_path, hy):
    """Hybrid compress sorts on the float stream and GPTQ-quantizes on the quantized stream, so quantizing the
    untuned float32 artifact redoes exactly compress(quantize=True): every file byte for byte, the same tensor
    table. A fine-tuned artifact quantizes too, keeps its record and loads at any rate."""
    from uniql.compress.requantize import quantize_artifact

    arch, src, art = hy
    q_ref = _compress(src, tmp_path / "q", quantize=True)
    q = quantize_artifact(art, tmp_path / "rq", calibration=_calib(), num_samples=NSAMP, seq_len=SEQ,
                          progress=False)
    files = sorted(p.name for p in q_ref.glob("model-*.safetensors"))
    assert files == sorted(p.name for p in q.glob("model-*.safetensors")) and len(files) > 2
    for name in files:
        assert (q_ref / name).read_bytes() == (q / name).read_bytes(), (arch, name)
    ca, cb = json.loads((q_ref / "config.json").read_text()), json.loads((q / "config.json").read_text())
    assert ca["uniql_tensors"] == cb["uniql_tensors"]
    qa, qb = ca["uniql"].pop("quantization"), cb["uniql"].pop("quantization")
    assert ca["uniql"] == cb["uniql"] and qb == {**qa, "after": "quantize_artifact",
                                                 "calibration": {"num_samples": NSAMP, "seq_len": SEQ}}
    with pytest.raises(uniql.InvalidArgumentError, match="already quantized"):
        quantize_artifact(q, tmp_path / "again", calibration=_calib(), seq_len=SEQ, progress=False)
    with pytest.raises(uniql.UnsupportedError, match="int4 artifact"):
        finetune(q, tmp_path / "no", calibration=_pattern_tokens(), progress=False)
    assert not (tmp_path / "again").exists() and not (tmp_path / "no").exists()
    ft = finetune(art, tmp_path / "ft", calibration=_pattern_tokens(), steps=2, seq_len=32, batch=2, progress=False)
    q2 = quantize_artifact(ft, calibration=_calib(), num_samples=NSAMP, seq_len=SEQ, progress=False)
    assert json.loads((q2 / "config.json").read_text())["uniql"]["finetune"]["steps"] == 2
    ids = np.random.default_rng(6).integers(0, VOCAB, size=20)
    m = uniql.load(q2, rate=0.15)
    for rate in (0.15, 0.35):
        m.set_rate(rate)
        np.testing.assert_array_equal(m.logits(ids), uniql.load(q2, rate=rate).logits(ids))
        f = uniql.load(ft, rate=rate).logits(ids)
        assert np.corrcoef(m.logits(ids).ravel(), f.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("rotate", [False, True], ids=["unrotated", "rotated-final-mix"])
def test_quantize_artifact_of_a_tied_hybrid_is_compress(tmp_path, rotate):
    """A tied embedding stays tied (one GPTQ table for the head and the lookups; rotated: the head reads the final
    mix's output, in the runtime and in the twin): Mamba2."""
    from uniql.compress.requantize import quantize_artifact

    hf, _, _ = make_hf("mamba2", seed=4, tie_word_embeddings=True)
    src = tmp_path / "src"
    hf.save_pretrained(src)
    f = _compress(src, tmp_path / "f", quantize=False, rotate=rotate)
    q_ref = _compress(src, tmp_path / "q", quantize=True, rotate=rotate)
    q = quantize_artifact(f, tmp_path / "rq", calibration=_calib(), num_samples=NSAMP, seq_len=SEQ, progress=False)
    cfg = json.loads((q / "config.json").read_text())
    assert cfg["tie_word_embeddings"] and cfg["uniql"]["quantization"]["embedding"] == "gptq-lm-head (tied)"
    assert ("backbone.norm_f.mix" in st.load_file(q / REST_FILE)) is rotate
    for p in sorted(q_ref.glob("model-*.safetensors")):
        assert p.read_bytes() == (q / p.name).read_bytes(), p.name
    tm = load_twin(f, max_seq=32)   # the twin's tied head
    tm.set_rate(0.35)
    ids = np.random.default_rng(8).integers(0, VOCAB, size=17)
    assert _rel(_logits(tm, ids), uniql.load(f, rate=0.35, kv_dtype="fp32").logits(ids)) <= RUNTIME_REL_TOL


@pytest.mark.parametrize("hy", ["bamba"], indirect=True)   # one family is enough for the command line
def test_cli_finetune_and_merge_hybrid(tmp_path, hy, capsys):
    from uniql.cli import main

    _, _, art = hy
    tok = tmp_path / "tokens.npy"
    np.save(tok, _pattern_tokens())
    common = ["--tokens", str(tok), "--steps", "2", "--seq-len", "32", "--batch", "2", "--eval-windows", "2"]
    assert main(["finetune", str(art), "-o", str(tmp_path / "ft"), "--loss", "kd", "--save-lora",
                 str(tmp_path / "l.st"), *common]) == 0
    assert main(["finetune", str(art), "-o", str(tmp_path / "merged"), "--merge", str(tmp_path / "l.st")]) == 0
    for f in sorted((tmp_path / "ft").glob("model-*.safetensors")):
        assert f.read_bytes() == (tmp_path / "merged" / f.name).read_bytes()
    capsys.readouterr()
    rec = json.loads((tmp_path / "ft" / "config.json").read_text())["uniql"]["finetune"]
    assert rec["loss"] == "kd" and rec["steps"] == 2
    m = uniql.load(tmp_path / "ft", rate=0.35)
    assert np.isfinite(m.logits(np.arange(10) % VOCAB)).all()


@pytest.mark.slow
def test_twin_at_mamba2_130m_shapes(tmp_path):
    """Mamba2-130m shapes (d 768, 24 layers, 24 heads x 64, state 128, runtime chunk 256; random weights, none
    ship): 300 tokens cross the runtime's chunk and the twin's 64. Both float32 evaluations are compared with the
    twin in float64 (measured: twin 4.3e-5, runtime 8.1e-5 at rate 0; twin vs runtime 5.5e-5), so the gap is float32
    rounding over 24 layers, not a different function."""
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(vocab_size=4096, hidden_size=768, num_heads=24, head_dim=64, state_size=128,
                                    n_groups=1, num_hidden_layers=24, chunk_size=256, expand=2)
    hf = transformers.Mamba2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith(".D") or name.endswith("A_log"):
                p.copy_(torch.randn_like(p) * 0.1 + (0.5 if name.endswith("A_log") else 1.0 if "norm" in name
                                                     or name.endswith(".D") else 0.0))
    hf.save_pretrained(tmp_path / "src")
    art = uniql.compress(tmp_path / "src", tmp_path / "art", calibration=np.random.default_rng(0).integers(
        0, 4096, (4, 128)), num_samples=4, seq_len=128, quantize=False, progress=False)
    tm, td = load_twin(art, max_seq=512), load_twin(art, max_seq=512).double()
    ids = np.random.default_rng(1).integers(0, 4096, 300)
    for rate in (0.0, 0.35):
        tm.set_rate(rate)
        td.set_rate(rate)
        with torch.no_grad():
            f64 = td(torch.from_numpy(ids))[0].numpy()
        got, rt = _logits(tm, ids), uniql.load(art, rate=rate, kv_dtype="fp32").logits(ids)
        assert _rel(got, f64) <= 1e-4 and _rel(rt, f64) <= 2e-4 and _rel(got, rt) <= 1e-4, rate


@pytest.mark.slow
@pytest.mark.parametrize("hy", ["bamba"], indirect=True)
def test_two_processes_give_the_merged_weights_of_one_hybrid(tmp_path, hy):
    """torchrun --nproc-per-node 2 (gloo, global batch 4 = 2 x 2) on a hybrid artifact writes the merged weights of
    one process with batch 4 (measured max abs difference 9e-8)."""
    check_one_and_two_processes(hy[2], _pattern_tokens(), tmp_path, port_offset=7)
