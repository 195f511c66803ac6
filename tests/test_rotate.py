"""uniql.compress.rotate: the residual-stream rotation is orthogonal (against a float64 reference) and, fused into the
weights by compress(rotate=True), leaves every architecture's fp32 artifact the same function at every rate."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.compress.rotate import Rotation
from uniql.formats import safetensors as st

from test_compress import _compress as _compress_tf, _make, VOCAB as TF_VOCAB

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_ssm import make_hf  # noqa: E402
from test_compress_hybrid import _compress as _compress_hy, VOCAB as HY_VOCAB  # noqa: E402

# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
ROTATED_REL_TOL = 1e-4   # the rotated fp32 artifact against the unrotated one, same rate
RATES = (0.0, 0.15, 0.25, 0.35)


def _hadamard(p: int) -> np.ndarray:
    H = np.ones((1, 1))
    while H.shape[0] < p:
        H = np.block([[H, H], [H, -H]])
    return H


@pytest.mark.parametrize("n", [1, 6, 48, 64, 576])
def test_rotation_is_the_documented_orthogonal_matrix(n):
    rot = Rotation(n, seed=5)
    Q = rot.matrix().astype(np.float64)
    m = rot.R.shape[0]
    p = n // m
    assert p & (p - 1) == 0 and (m % 2 == 1)
    ref = np.diag(rot.signs) @ np.kron(_hadamard(p), rot.R) / np.sqrt(p)  # float64 definition
    assert np.abs(Q - ref).max() <= 1e-6
    assert np.abs(ref @ ref.T - np.eye(n)).max() <= 1e-12
    assert set(np.unique(rot.signs)) <= {-1.0, 1.0}
    W = np.random.default_rng(0).standard_normal((7, n)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    np.testing.assert_allclose(rot.rows(W, g), (W * g) @ ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rot.cols(W.T), ref.T @ W.T, rtol=0, atol=1e-5)
    # deterministic in the seed, different across seeds
    np.testing.assert_array_equal(Rotation(n, seed=5).matrix(), rot.matrix())
    if n > 2:
        assert np.abs(Rotation(n, seed=6).matrix() - rot.matrix()).max() > 0.01


def test_rotate_rejects_bad_inputs():
    rot = Rotation(8)
    with pytest.raises(uniql.ShapeError):
        _C.rotate(np.zeros((3, 6), np.float32), 0, None, rot.signs, rot.R)
    with pytest.raises(uniql.ShapeError):
        _C.rotate(np.zeros((6, 3), np.float32), 1, None, rot.signs, rot.R)
    with pytest.raises(uniql.InvalidArgumentError):
        _C.rotate(np.zeros((3, 8), np.float32), 2, None, rot.signs, rot.R)
    with pytest.raises(uniql.DTypeError):
        _C.rotate(np.zeros((3, 8), np.float64), 0, None, rot.signs, rot.R)
    bad = np.zeros((3, 8), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(uniql.NumericError, match="row 1, column 2"):
        _C.rotate(bad, 0, None, rot.signs, rot.R)
    with pytest.raises(uniql.InvalidArgumentError):
        _C.rotation_size(0)
    with pytest.raises(uniql.InvalidArgumentError):
        uniql.compress("nowhere", rotate=True, rotate_seed=-1)


def _same_at_every_rate(plain, rotated, ids):
    for rate in RATES:
        a = uniql.load(plain, rate=rate, kv_dtype="fp32").logits(ids)
        b = uniql.load(rotated, rate=rate, kv_dtype="fp32").logits(ids)
        assert float(np.abs(b.astype(np.float64) - a).max() / np.abs(a).max()) <= ROTATED_REL_TOL, rate


@pytest.mark.parametrize("kind,tied,untie", [("llama", False, False), ("llama", True, False), ("llama", True, True),
                                             ("qwen2", False, False)])
def test_rotated_transformer_is_the_same_function_at_every_rate(tmp_path, kind, tied, untie):
    src, model = _make(tmp_path, kind, tied)
    with torch.no_grad():  # norm scales far from one (HF initialises them to ones: the final mix would be I)
        gen = torch.Generator().manual_seed(6)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen) * 1.5)
    model.save_pretrained(src)
    plain = _compress_tf(src, tmp_path / "plain", rotate=False)
    rotated = _compress_tf(src, tmp_path / "rot", rotate=True, rotate_seed=3, untie=untie)
    cfg = json.loads((rotated / "config.json").read_text())
    mix = tied and not untie  # a tied embedding stays tied, the final norm's scale in the final mix
    assert cfg["tie_word_embeddings"] is mix and "uniql_source_tied" not in cfg
    assert cfg["uniql"]["sorting"]["rotation"] == {"kind": "randomized-hadamard", "seed": 3,
                                                   "untied": tied and untie, "final_mix": mix}
    assert cfg["uniql"]["format_version"] == (2 if mix else 1)
    rest = st.load_file(rotated / "model-rest.safetensors")
    assert ("model.norm.mix" in rest) is mix and ("lm_head.weight" in rest) is not mix
    if mix:  # F = Q^T diag(g) Q, float64 reference
        g = st.load_file(next(src.glob("*.safetensors")))["model.norm.weight"].astype(np.float64)
        Q = Rotation(g.size, 3).matrix().astype(np.float64)
        np.testing.assert_allclose(rest["model.norm.mix"], Q.T @ np.diag(g) @ Q, rtol=0, atol=1e-5)
        bad = tmp_path / "bad"  # a final mix the config names must be there, of the right shape
        shutil.copytree(rotated, bad)
        for F in (None, np.zeros((3, 3), np.float32)):
            r2 = {k: v for k, v in rest.items() if k != "model.norm.mix"}
            if F is not None:
                r2["model.norm.mix"] = F
            st.save_file(bad / "model-rest.safetensors", r2)
            with pytest.raises(uniql.FormatError if F is None else uniql.ShapeError, match="mix"):
                uniql.load(bad)
        # a float16 mix (what quantized artifacts store) stays float16 in memory: the same logits as its float32 copy
        F16 = rest["model.norm.mix"].astype(np.float16)
        loaded = {}
        for name, F in (("half", F16), ("half32", F16.astype(np.float32))):
            shutil.copytree(rotated, tmp_path / name)
            st.save_file(tmp_path / name / "model-rest.safetensors", dict(rest, **{"model.norm.mix": F}))
            loaded[name] = uniql.load(tmp_path / name)
        assert loaded["half"]._final_mix.dtype == np.float16 and loaded["half32"]._final_mix.dtype == np.float32
        assert loaded["half32"].weight_bytes() - loaded["half"].weight_bytes() == F16.nbytes
        ids16 = np.random.default_rng(9).integers(0, TF_VOCAB, size=11).astype(np.int32)
        np.testing.assert_array_equal(loaded["half"].logits(ids16), loaded["half32"].logits(ids16))
        from uniql.finetune.twin import load_twin  # the fine-tuning twin applies the mix like the runtime
        tm = load_twin(rotated, max_seq=32)
        tm.set_rate(0.35)
        ids = np.random.default_rng(8).integers(0, TF_VOCAB, size=17)
        with torch.no_grad():
            t = tm(torch.from_numpy(ids.astype(np.int64)))[0].numpy().astype(np.float64)
        r = uniql.load(rotated, rate=0.35, kv_dtype="fp32").logits(ids.astype(np.int32))
        assert float(np.abs(t - r).max() / np.abs(r).max()) <= 1e-5
    _same_at_every_rate(plain, rotated, np.random.default_rng(4).integers(0, TF_VOCAB, size=23).astype(np.int32))


@pytest.mark.parametrize("arch,tied", [("mamba2", False), ("mamba2", True), ("nemotron_h", False), ("bamba", True)])
def test_rotated_hybrid_is_the_same_function_at_every_rate(tmp_path, arch, tied):
    hf, _, _ = make_hf(arch, tie_word_embeddings=tied)
    src = tmp_path / "src"
    hf.save_pretrained(src)
    plain = _compress_hy(src, tmp_path / "plain", rotate=False)
    rotated = _compress_hy(src, tmp_path / "rot", rotate=True)
    cfg = json.loads((rotated / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["uniql"]["sorting"]["rotation"]["final_mix"] is tied
    assert any(k.endswith(".mix") for k in st.load_file(rotated / "model-rest.safetensors")) is tied
    _same_at_every_rate(plain, rotated, np.random.default_rng(5).integers(0, HY_VOCAB, size=19).astype(np.int32))
