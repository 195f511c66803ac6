"""The float16 KV cache (``kv_dtype="fp16"``, the default) against the float32 one (``kv_dtype="fp32"``) for every
family with attention layers (Llama, Qwen2, Nemotron-H, Bamba; random weights): prefill, decode and batched decode
logits within a tight tolerance at full and reduced attention keeps, half the cache bytes, a sequence moved between
the dtypes by a live rate change, and bad ``kv_dtype`` values refused with a clear error."""
import numpy as np
import pytest

import uniql
from uniql import _C, InvalidArgumentError
from uniql.models.batch import BatchDecoder
from uniql.models.runtime import KV_DTYPES, Model, kv_dtype_code

pytest.importorskip("torch")
pytest.importorskip("transformers")

import test_runtime as tr  # noqa: E402  (random-weight Llama / Qwen2 builders)
import test_ssm as ts  # noqa: E402  (random-weight Nemotron-H / Bamba builders)

# max-abs error / max-abs float32-cache logit: K and V rounded to float16 (relative error <= 2^-11 per element)
# move the logits of these models by ~1e-5..3e-4 of their largest value
KV16_REL_TOL = 1e-3
ARCHS = ("llama", "qwen2", "nemotron_h", "bamba")


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def build(arch):
    """(config dict, tensors, vocab) of a small random-weight model of `arch`."""
    if arch in ("llama", "qwen2"):
        _, d, sd = tr.make_hf(arch, seed=2)
    else:
        _, d, sd = ts.make_hf(arch, seed=2)
    return d, sd, int(d["vocab_size"])


def attention_layers(m):
    return [i for i in range(m.num_layers) if "attn" in m.stored(i)]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    d, sd, vocab = build(request.param)
    m16 = Model.from_hf_tensors(d, sd, max_seq=48)
    m32 = Model.from_hf_tensors(d, sd, max_seq=48, kv_dtype="fp32")
    return request.param, m16, m32, vocab


def reduce_attn(m, frac):
    """Attention keeps cut to about `frac` of the stored head dims (even, whole RoPE pairs; rotary share even)."""
    for i in attention_layers(m):
        R = m.stored(i)["attn"]
        r = max(4, int(R * frac) // 4 * 4)
        m.set_keep(i, attn=r)


@pytest.mark.parametrize("frac", [1.0, 0.75, 0.5])
def test_fp16_cache_logits_close_to_fp32(pair, frac):
    arch, m16, m32, vocab = pair
    assert (m16.kv_dtype, m32.kv_dtype) == ("fp16", "fp32")
    for m in (m16, m32):
        m.reset()
        reduce_attn(m, frac)
    ids = np.random.default_rng(5).integers(0, vocab, 30).astype(np.int32)
    out = {}
    for name, m in (("16", m16), ("32", m32)):
        rows = [m.forward(ids[:17])]  # prefill, then token by token
        rows += [m.forward(ids[t:t + 1]) for t in range(17, 30)]
        out[name] = np.concatenate(rows)
    err = rel_err(out["16"], out["32"])
    assert 0.0 < err <= KV16_REL_TOL, (arch, frac, err)  # the float16 cache is used, and close
    # decode over the float16 cache is prefill over it (the same rounding of the same K / V rows): bit for bit for the
    # attention stacks; the hybrids' chunked scan and recurrence are two float32 evaluation orders
    m16.reset()
    full = m16.forward(ids)
    if arch in ("llama", "qwen2"):
        np.testing.assert_array_equal(full, out["16"])
    else:
        assert rel_err(full, out["16"]) <= ts.ORDER_REL_TOL
    for m in (m16, m32):
        reduce_attn(m, 1.0)


def test_fp16_cache_is_half_the_bytes(pair):
    _, m16, m32, _ = pair
    assert m32.kv_cache_bytes() > 0 and m16.kv_cache_bytes() * 2 == m32.kv_cache_bytes()
    assert m32.memory_bytes() - m16.memory_bytes() == m16.kv_cache_bytes()


def test_batched_decode_fp16_cache(pair):
    """Batched decoding over float16 states: the logits of decoding each sequence alone (bit for bit), close to the
    float32 cache's."""
    arch, m16, m32, vocab = pair
    rng = np.random.default_rng(9)
    prompts = [rng.integers(0, vocab, n).astype(np.int32) for n in (5, 9, 3)]
    steps = rng.integers(0, vocab, (4, 3)).astype(np.int32)
    got = {}
    for name, m in (("16", m16), ("32", m32)):
        dec = BatchDecoder(m, max_batch=3, max_seq=24)
        seqs = [dec.new_sequence() for _ in prompts]
        for s, p in zip(seqs, prompts):
            dec.prefill(s, p)
        got[name] = np.stack([dec.step(seqs, steps[k]) for k in range(len(steps))])
    for i, p in enumerate(prompts):  # alone, on the model's own state
        m16.reset()
        m16.forward(p)
        alone = np.concatenate([m16.forward(steps[k, i:i + 1]) for k in range(len(steps))])
        np.testing.assert_array_equal(got["16"][:, i], alone)
    assert 0.0 < rel_err(got["16"], got["32"]) <= KV16_REL_TOL


def test_state_memory_of_batch_sequences(pair):
    _, m16, m32, _ = pair
    b16, b32 = BatchDecoder(m16, max_batch=1, max_seq=16), BatchDecoder(m32, max_batch=1, max_seq=16)
    s16, s32 = b16.new_sequence(), b32.new_sequence()
    assert _C.hy_state_info(s16.state)[2:] == (_C.KV_F16, _C.hy_state_info(s32.state)[3] // 2)


def test_bad_kv_dtype():
    d, sd, _ = build("llama")
    for bad in ("bf16", "int8", "", None, 16):
        with pytest.raises(InvalidArgumentError, match="kv_dtype"):
            Model.from_hf_tensors(d, sd, kv_dtype=bad)
        with pytest.raises(InvalidArgumentError, match="kv_dtype"):
            uniql.load("/nonexistent/model", kv_dtype=bad)  # refused before the path is read
    assert [kv_dtype_code(k) for k in KV_DTYPES] == [_C.KV_F16, _C.KV_F32]
    m = Model.from_hf_tensors(d, sd, max_seq=8)
    with pytest.raises(InvalidArgumentError, match="KV-cache dtype 7"):
        _C.hy_state_new(m._cm, 8, 8, 7)
