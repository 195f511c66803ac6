"""Compact output projections (uq_hy_set_keep / uq_q4_r16_prefix_in): below its stored keep an int4 o_proj or Mamba
out_proj runs on a contiguous copy of its kept columns. Against the stored weights read in place (``compact=False``)
and against a model loaded at the rate (the exact-truncation guarantee): the same logits bit for bit at every rate,
on every kernel path, with int8 and fp32 activations, in prefill, decode, batched decode and across live rate
switches; the copies follow the keeps (freed at the stored keep) and are counted in memory_bytes."""
from __future__ import annotations

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.models.batch import BatchDecoder

from _helpers import assert_rate_round_trip_keeps_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PATHS = [p for p in ("ref", "avx2", "avx512") if p == "ref" or _C.kernels_info()[p]]
RATES = (0.15, 0.25, 0.35)
VOCAB = 128


def _hf(arch: str):
    """Head dims of 64 (8 chunks of 8 columns), so the rates' keeps drop whole chunks of every head."""
    torch.manual_seed(0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                       max_position_embeddings=128)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.NemotronHConfig(vocab_size=VOCAB, hidden_size=128, hybrid_override_pattern="M*-",
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                       intermediate_size=192, ssm_state_size=16, mamba_num_heads=4,
                                       mamba_head_dim=64, n_groups=2, chunk_size=8, attn_implementation="eager")
    return transformers.NemotronHForCausalLM(cfg).float().eval()


@pytest.fixture(scope="module", params=["llama", "nemotron_h"])
def art(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    _hf(request.param).save_pretrained(tmp / "src")
    calib = np.random.default_rng(0).integers(0, VOCAB, size=(4, 24))
    return uniql.compress(tmp / "src", tmp / "int4", calibration=calib, num_samples=4, seq_len=24, progress=False,
                          quantize=True)


def _ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int32)


def _run(m) -> dict[str, np.ndarray]:
    m.reset()
    out = {"prefill": m.logits(_ids(11, 1))}
    out["decode"] = np.stack([m.forward(np.array([t], np.int32))[0] for t in _ids(3, 2)])
    dec = BatchDecoder(m, max_batch=2, max_seq=32)
    seqs = [dec.new_sequence() for _ in range(2)]
    for i, s in enumerate(seqs):
        dec.prefill(s, _ids(4 + i, 3 + i))
    out["batch"] = dec.step(seqs, _ids(2, 5))
    return out


def _equal(a: dict, b: dict, what: str) -> None:
    for k in a:
        assert np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), f"{what}: {k} differs"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", ["int8", "fp32"])
def test_compact_equals_stored_and_loaded_at_every_rate(art, path, act):
    _C.kernels_set(path)
    _C.kernels_set_q4_act(act)
    m = uniql.load(art, rate=0.0, max_seq=64, kv_dtype="fp32")
    assert m.compact_bytes() == 0
    for rate in RATES:
        m.set_rate(rate)
        got = _run(m)
        assert m.compact_bytes() > 0, f"rate {rate}: no compact copy (no keep drops a whole chunk)"
        m.set_options(compact=False)
        assert m.compact_bytes() == 0
        _equal(got, _run(m), f"{path} {act} rate {rate}: compact vs stored")
        m.set_options(compact=True)
        part = uniql.load(art, rate=rate, max_seq=64, kv_dtype="fp32")
        assert part.compact_bytes() == 0  # loaded at the rate: every keep is the stored one
        _equal(got, _run(part), f"{path} {act} rate {rate}: set_rate vs loaded at the rate")
        if rate == RATES[0]:  # a model loaded at a rate compacts at higher ones
            part.set_rate(RATES[-1])
            assert part.compact_bytes() > 0
    m.set_rate(0.0)
    assert m.compact_bytes() == 0


def test_compact_copies_follow_keeps_and_memory(art):
    m = uniql.load(art, rate=0.0, max_seq=64)
    base = m.memory_bytes()
    m.set_rate(0.35)
    cb = m.compact_bytes()
    # at most the kept share of each output projection (the layer weights are a superset)
    assert 0 < cb < m.weight_bytes() and m.memory_bytes() == base + cb
    m.set_rate(0.15)
    assert m.compact_bytes() > cb  # more columns kept
    m.set_rate(0.35)
    assert m.compact_bytes() == cb
    m.set_rate(0.0)
    assert m.compact_bytes() == 0 and m.memory_bytes() == base


def test_live_rate_switch_with_compact_copies(art):
    m = uniql.load(art, rate=0.0, max_seq=64)
    assert_rate_round_trip_keeps_state(m, _ids(14, 7), 9)
    # switching mid-sequence onto a compacted rate = setting that rate before the same tokens
    ids = _ids(14, 8)
    m.reset()
    m.forward(ids[:9])
    m.set_rate(0.35)
    a = m.forward(ids[9:])
    m.set_options(compact=False)
    m.reset()
    m.set_rate(0.0)
    m.forward(ids[:9])
    m.set_rate(0.35)
    np.testing.assert_array_equal(m.forward(ids[9:]), a)


def test_each_mixer_kind_compacts_alone(art):
    """o_proj (attention head dims) and Mamba out_proj (SSM head channels) each get a copy when only their layer's keep
    drops chunks; an odd keep or one inside the last chunk keeps reading the stored weight; same logits."""
    m = uniql.load(art, rate=0.0, max_seq=64)
    ids = _ids(10, 9)
    for layer in range(m.num_layers):
        st = m.stored(layer)
        comp = "attn" if "attn" in st else "ssm_head" if "ssm_head" in st else None
        if comp is None:
            continue
        m.set_keep(layer, **{comp: 24})
        assert m.compact_bytes() > 0, f"layer {layer} {comp}"
        a = m.logits(ids)
        m.set_options(compact=False)
        np.testing.assert_array_equal(m.logits(ids), a)
        m.set_options(compact=True)
        m.set_keep(layer, **{comp: st[comp] - 2})  # the last chunk of every head is still read: no copy
        assert m.compact_bytes() == 0
        m.set_keep(layer, **{comp: st[comp]})
        assert m.compact_bytes() == 0


@pytest.mark.parametrize("act", ["int8", "fp32"])
def test_prefix_in_linear_equals_stored_weight_at_keep(act):
    """_C.q4_r16_prefix_in at the linear level: the compact weight at its full width = the stored weight at that keep,
    bit for bit, on every path, one token and several (keeps that cut a chunk and a group; head segments)."""
    from uniql.compress.quant import quantize_rtn

    rng = np.random.default_rng(3)
    _C.kernels_set_q4_act(act)
    for rows, nsi, seg, g, keep in ((48, 4, 64, 64, 40), (40, 8, 128, 128, 80), (33, 2, 96, 32, 38)):
        # per-head groups (an o_proj's layout): quantize head by head
        parts = [quantize_rtn(np.ascontiguousarray(rng.standard_normal((rows, seg)).astype(np.float32)), g)
                 for _ in range(nsi)]
        packed = np.concatenate([p.packed for p in parts], axis=1)
        scales = np.concatenate([p.scales for p in parts], axis=1).astype(np.float16)
        pr, sr = _C.q4_repack((packed, scales, g, nsi * seg, None), 1, nsi)
        stored = (pr, sr, g, nsi * seg, None, (rows, 1, nsi))
        pc, sc = _C.q4_r16_prefix_in(stored, keep)
        assert pc.nbytes < pr.nbytes and pc.ctypes.data % 64 == 0
        compact = (pc, sc, g, nsi * keep, None, (rows, 1, nsi))
        for T in (1, 5):
            x = rng.standard_normal((T, nsi * keep)).astype(np.float32)
            for path in PATHS:
                _C.kernels_set(path)
                ya, yb = np.empty((T, rows), np.float32), np.empty((T, rows), np.float32)
                _C.linear_forward(stored, x, ya, 1, rows, nsi, keep)
                _C.linear_forward(compact, x, yb, 1, rows, nsi, keep)
                assert np.array_equal(ya.view(np.uint32), yb.view(np.uint32)), (rows, nsi, keep, T, path)
    with pytest.raises(uniql.UniqlError):
        _C.q4_r16_prefix_in(stored, 3)  # odd width of a head segment
    with pytest.raises(uniql.UniqlError):
        _C.q4_r16_prefix_in(stored, seg + 2)
    with pytest.raises(uniql.UniqlError):
        _C.q4_r16_prefix_in((packed, scales, g, nsi * seg, None), keep)  # row-major
