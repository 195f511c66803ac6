"""Batched decoding (uniql.models.batch / uq_hy_decode_batch): sequences that join and leave between steps, each with its
own state, give exactly (bit for bit) the logits of decoding each alone, for fp32 checkpoints and int4 artifacts
with int8 (W4A8) and fp32 (W4A32) activations, at reduced rates; bad batches are rejected before any state moves."""
from __future__ import annotations

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.compress import DEFAULT_PRECISION
from uniql.models.batch import BatchDecoder

from _helpers import tiny_llama_config, tiny_llama_tensors, write_tiny_llama

VOCAB = 96


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """fp32 checkpoint, int4 elastic artifact and a tied-embedding int4 artifact of tiny random Llamas (GQA 4/2
    heads, 2 layers)."""
    root = tmp_path_factory.mktemp("batch")
    cfg = tiny_llama_config(VOCAB, 64, 128, 2, 4, 2, 16)
    cfg["max_position_embeddings"] = 128
    src = write_tiny_llama(root / "src", cfg, tiny_llama_tensors(cfg, seed=5))
    calib = np.random.default_rng(0).integers(0, VOCAB, size=(8, 32))
    art = uniql.compress(src, root / "art", calibration=calib, num_samples=8, seq_len=32, progress=False,
                         quantize=True)
    tcfg = dict(cfg, tie_word_embeddings=True)  # int4 lm_head = the row-major embedding (its own batch path)
    tsrc = write_tiny_llama(root / "tsrc", tcfg, tiny_llama_tensors(tcfg, seed=6))
    # rotated (the default): the tied table stays tied behind the final mix, which batched decoding applies too;
    # the default policy with an int4 head (the default's tied head is int8, which has no R16 copy)
    tied = uniql.compress(tsrc, root / "tied", calibration=calib, num_samples=8, seq_len=32, progress=False,
                          quantize=True, precision=dict(DEFAULT_PRECISION, lm_head="int4-g64"))
    return {"fp32": src, "int4": art, "int4-tied": tied}


def _alone(model, prompt, tokens):
    """Logits of prompt's last token, then of each of `tokens` fed one at a time (a lone T = 1 decode)."""
    model.reset()
    out = [model.forward(prompt, last_only=True)[0]]
    for t in tokens:
        out.append(model.forward([t], last_only=True)[0])
    return np.stack(out)


def _run_ragged(model, dec, prompts, steps, joins, vocab=VOCAB):
    """Sequence i joins before step joins[i] and leaves after steps[i] decode steps; every step feeds each live
    sequence a token drawn from a fixed stream. Returns per sequence (fed tokens, logits)."""
    rng = np.random.default_rng(7)
    feeds = [rng.integers(0, vocab, steps[i]).tolist() for i in range(len(prompts))]
    seqs, logits, done = {}, {i: [] for i in range(len(prompts))}, {i: 0 for i in range(len(prompts))}
    step = 0
    while any(done[i] < steps[i] for i in range(len(prompts))):
        for i, p in enumerate(prompts):
            if joins[i] == step:
                seqs[i] = dec.new_sequence()
                logits[i].append(dec.prefill(seqs[i], p))
        live = [i for i in seqs if done[i] < steps[i]]
        if live:
            out = dec.step([seqs[i] for i in live], [feeds[i][done[i]] for i in live])
            for k, i in enumerate(live):
                logits[i].append(out[k])
                done[i] += 1
        step += 1
    return [(feeds[i], np.stack(logits[i])) for i in range(len(prompts))]


@pytest.mark.parametrize("kind,act,rate", [("fp32", None, 0.0), ("int4", "int8", 0.0), ("int4", "int8", 0.3),
                                           ("int4", "fp32", 0.2), ("int4-tied", "int8", 0.1),
                                           ("int4-tied", "fp32", 0.0)])
def test_batched_equals_alone(tiny, kind, act, rate):
    model = uniql.load(tiny[kind])
    if rate:
        model.set_rate(rate)
    prompts = [np.random.default_rng(s).integers(0, VOCAB, n) for s, n in enumerate((3, 9, 1, 17, 5, 30))]
    steps, joins = [12, 4, 9, 1, 15, 6], [0, 0, 2, 3, 3, 8]
    ctx = uniql.int4_activations(act) if act else _nullctx()
    with ctx:
        dec = BatchDecoder(model, max_batch=6, max_seq=64)
        assert (dec.head_bytes > 0) == (kind == "int4-tied")  # the R16 copy of the tied head (used with int8)
        got = _run_ragged(model, dec, prompts, steps, joins)
        for p, (feed, lg) in zip(prompts, got):
            np.testing.assert_array_equal(lg, _alone(model, p, feed))


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_rate_switch_between_steps_keeps_every_cache(tiny):
    """A rate change between two batched steps = the same change between lone decodes (caches stay valid)."""
    model = uniql.load(tiny["int4"])
    dec = BatchDecoder(model, max_batch=2, max_seq=64)
    p = [np.arange(3, 10), np.arange(20, 24)]
    seqs = [dec.new_sequence() for _ in p]
    for s, q in zip(seqs, p):
        dec.prefill(s, q)
    dec.step(seqs, [5, 6])
    model.set_rate(0.35)
    got = dec.step(seqs, [7, 8])
    model.set_rate(0.0)
    for i, (q, a, b) in enumerate(zip(p, [5, 6], [7, 8])):
        model.reset()
        model.forward(q)
        model.forward([a])
        model.set_rate(0.35)
        np.testing.assert_array_equal(got[i], model.forward([b])[0])
        model.set_rate(0.0)


def test_bad_batches_leave_states_unchanged(tiny):
    src = tiny["fp32"]
    model = uniql.load(src)
    dec = BatchDecoder(model, max_batch=2, max_seq=8)
    a, b = dec.new_sequence(), dec.new_sequence()
    dec.prefill(a, [1, 2, 3])
    dec.prefill(b, [4])
    with pytest.raises(uniql.InvalidArgumentError, match="share one state"):
        dec.step([a, a], [1, 2])
    with pytest.raises(uniql.RangeError, match="token id 96 of sequence 1"):
        dec.step([a, b], [1, VOCAB])
    with pytest.raises(uniql.InvalidArgumentError, match="exceed max_batch"):
        dec.step([a, b, dec.new_sequence()], [1, 2, 3])
    with pytest.raises(uniql.InvalidArgumentError, match="2 ids for 1 sequences"):
        dec.step([a], [1, 2])
    other = BatchDecoder(uniql.load(src), max_batch=2, max_seq=8)
    with pytest.raises(uniql.StateError, match="state 1 was built for another model"):
        dec.step([a, other.new_sequence()], [1, 2])
    with pytest.raises(TypeError, match="states\\[0\\] is not a uniql.hy_state capsule"):
        _C.hy_decode_batch(model._cm, dec._batch, [object()], np.zeros(1, np.int32), np.zeros((1, VOCAB), np.float32))
    assert (a.position, b.position) == (3, 1)
    for _ in range(4):
        dec.step([a, b], [1, 2])
    assert (a.position, b.position) == (7, 5)
    dec.step([a, b], [1, 2])
    with pytest.raises(uniql.RangeError, match="sequence 0 at position 8: KV cache full"):
        dec.step([a, b], [1, 2])
    assert (a.position, b.position) == (8, 6)
    with pytest.raises(uniql.RangeError, match="do not fit the context of 8"):
        dec.prefill(b, [1, 2, 3])
    with pytest.raises(uniql.InvalidArgumentError, match="max_batch must be an int >= 1"):
        BatchDecoder(model, max_batch=0)
    a.reset()
    assert a.position == 0
    with pytest.raises(uniql.UnsupportedError, match="not a row-major int4 weight"):
        _C.hy_batch_set_head(dec._batch, (np.zeros((1, 1), np.float32), None, 0, 1, None))


def test_tied_head_copy_is_checked(tiny):
    model = uniql.load(tiny["int4-tied"])
    dec = BatchDecoder(model, max_batch=2)
    q = model._tied_q4
    packed, scales = _C.q4_repack((q.packed[:-16], q.scales[:-16], q.group, q.shape[1], None), 1, 1)
    with pytest.raises(uniql.ShapeError, match="want the \\(96, 64\\) int4 lm_head"):
        _C.hy_batch_set_head(dec._batch, (packed, scales, q.group, q.shape[1], None, (q.shape[0] - 16, 1, 1)))


# ----------------------------------------------------------------------------------------------- hybrids ----

@pytest.mark.parametrize("arch", ["mamba2", "nemotron_h", "bamba"])
def test_hybrid_batched_equals_alone(arch):
    """Mamba2 / Nemotron-H / Bamba: conv and SSM states, KV caches per sequence; joins and leaves between steps;
    at full and reduced keeps (head channels, state dims, attention and MLP)."""
    pytest.importorskip("torch")
    from test_ssm import make_hf

    from uniql.models.runtime import Model

    _, cd, sd = make_hf(arch, seed=2)
    model = Model.from_hf_tensors(cd, sd, max_seq=64)
    dec = BatchDecoder(model, max_batch=4, max_seq=64)
    assert dec.batched
    prompts = [np.random.default_rng(s).integers(0, 128, n) for s, n in enumerate((5, 1, 11, 8))]
    steps, joins = [6, 9, 3, 5], [0, 1, 1, 4]
    for half in (False, True):
        if half:
            for layer in range(model.num_layers):
                model.set_keep(layer, **{k: v // 2 for k, v in model.stored(layer).items()})
        got = _run_ragged(model, dec, prompts, steps, joins, vocab=128)
        for p, (feed, lg) in zip(prompts, got):
            np.testing.assert_array_equal(lg, _alone(model, p, feed))
