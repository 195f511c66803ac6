"""The PyTorch twin of the C runtime (uniql.finetune.twin.TwinModel): one class for Llama, Qwen2, Mamba2, Nemotron-H
and Bamba, on small random-weight artifacts.

It must compute what ``uniql.load(art, rate)`` deploys at rates 0 / 0.15 / 0.25 / 0.35 and at explicit keeps that
cut every component (float32) -- the proof that the training masks are the deployment's -- and at a sampled rate
the LoRA patches must get exactly zero gradient on the channels the rate drops (stated here from the sorted layout
itself, not from the twin's index code) and a non-zero one on those it keeps. Training (ce, kd) must lower the
loss, merging must keep the function, and the cached decoding must equal one full forward, for every family.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import uniql

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_finetune import _logits, _one_thread, _rel  # noqa: E402,F401  (_one_thread: the autouse one-thread fixture)
from test_finetune import _make as make_transformer  # noqa: E402  (small random Llama / Qwen2 checkpoints)
from test_ssm import make_hf  # noqa: E402  (small random Mamba2 / Nemotron-H / Bamba checkpoints)
from uniql.finetune import FinetuneOptions, generate_windows, train  # noqa: E402
from uniql.finetune.twin import Attention, Mamba2Mixer, MLP, TwinModel, load_twin  # noqa: E402

FAMILIES = ("llama", "qwen2", "mamba2", "nemotron_h", "bamba")
RATES = (0.0, 0.15, 0.25, 0.35)
# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
RUNTIME_REL_TOL = 1e-5   # twin vs C runtime, float32 (measured <= 7.2e-7: other summation orders)
MERGE_REL_TOL = 1e-5     # merged weights vs the patches in the forward (one float32 add per weight)
NSAMP, SEQ = 4, 24


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory):
    """(family, float32 artifact, vocabulary size)."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"twin-{kind}")
    if kind in ("llama", "qwen2"):
        src = make_transformer(tmp, kind)
    else:
        hf, _, _ = make_hf(kind)
        src = tmp / "src"
        hf.save_pretrained(src)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    calib = np.random.default_rng(0).integers(0, vocab, size=(NSAMP, SEQ))
    art = uniql.compress(src, tmp / "art", calibration=calib, num_samples=NSAMP, seq_len=SEQ, quantize=False,
                         progress=False)
    return kind, art, vocab


def _pattern(vocab: int, n: int = 2048, seed: int = 0) -> np.ndarray:
    """Learnable text: a fixed random sequence of 24 tokens repeated (the model can learn to continue it)."""
    period = np.random.default_rng(seed).integers(0, vocab, size=24)
    return np.tile(period, n // 24 + 1)[:n]


def _randomize_lora(tm: TwinModel, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lo in tm.lora.values():
            lo.B.copy_(torch.randn(lo.B.shape, generator=g) * 0.05)


def _half_keeps(tm: TwinModel) -> list[dict[str, int]]:
    """Keeps that cut every component of every layer (attention: whole RoPE pairs, partial RoPE included)."""
    return [{c: max(4, v // 2 // 4 * 4) for c, v in full.items()} for full in tm.full]


def test_one_class_for_every_family(fam):
    """Every family is the same class: one residual block per mixer and per MLP, of the runtime's layer kinds."""
    kind, art, _ = fam
    tm = load_twin(art, max_seq=8)
    assert type(tm) is TwinModel
    c = uniql.load(art).config
    assert len(tm.layers) == c.num_hidden_layers
    for t, blocks in zip(c.layer_types, tm.layers):
        want = ([{"mamba": Mamba2Mixer, "attention": Attention}[t]] if t != "mlp" else []) + \
            ([MLP] if t == "mlp" or c.ffn_after_mixer else [])
        assert [type(b.body) for b in blocks] == want, (kind, t)


def test_twin_equals_runtime_at_every_rate(fam):
    """Twin logits == the C runtime's (float32) at rates 0 / 0.15 / 0.25 / 0.35 with the loader's keep sizes, and at
    keeps that halve every component."""
    kind, art, vocab = fam
    tm = load_twin(art, max_seq=64)
    ids = np.random.default_rng(1).integers(0, vocab, size=37)   # several scan chunks of 8, one partial
    sizes = set()
    for rate in RATES:
        tm.set_rate(rate)
        sizes.add(json.dumps(tm.keeps))
        m = uniql.load(art, rate=rate, kv_dtype="fp32")
        assert tm.keeps == m.keep_sizes(rate)
        assert _rel(_logits(tm, ids), m.logits(ids)) <= RUNTIME_REL_TOL, (kind, rate)
    assert len(sizes) == len(RATES)     # every rate prunes differently
    keeps = _half_keeps(tm)
    tm.set_keep(keeps)
    m = uniql.load(art, kv_dtype="fp32")
    for i, ks in enumerate(keeps):
        m.set_keep(i, **ks)
    assert _rel(_logits(tm, ids), m.logits(ids)) <= RUNTIME_REL_TOL, kind
    if kind in ("mamba2", "nemotron_h", "bamba"):
        tm.scan_chunk = 5   # the twin's own SSD chunking (the runtime's is 8) changes nothing but rounding
        assert _rel(_logits(tm, ids), m.logits(ids)) <= RUNTIME_REL_TOL, kind


def _dropped(tm: TwinModel, s: str, ks: dict[str, int]) -> tuple[str, np.ndarray]:
    """(the LoRA factor that carries linear s's pruned axis: "B" rows or "A" columns, a boolean mask of the
    dropped entries of that axis), read off the sorted layout: every pruned axis is a prefix per head / group /
    channel block; with partial RoPE a Q/K head keeps r/2 rotary rows (stored first) and r/2 pass rows (from d/2)."""
    c = tm.config
    if s in ("in", "out"):
        H, P, G, N = c.ssm_heads, c.ssm_head_dim, c.ssm_groups, c.ssm_state
        Pk, Nk = ks["ssm_head"], ks["ssm_state"]
        if s == "out":
            return "A", np.arange(H * P) % P >= Pk
        j = np.arange(2 * H * P + 2 * G * N + H)
        zx, bc = j < 2 * H * P, (j >= 2 * H * P) & (j < 2 * H * P + 2 * G * N)
        return "B", (zx & (j % P >= Pk)) | (bc & ((j - 2 * H * P) % N >= Nk))
    if s in ("q", "k", "v", "o"):
        d, r = c.head_dim, ks["attn"]
        e = np.arange((c.num_kv_heads if s in ("k", "v") else c.num_heads) * d) % d
        if s in ("q", "k") and tm.rope == "partial":
            return "B", np.where(e < d // 2, e >= r // 2, e - d // 2 >= r // 2)
        return ("A" if s == "o" else "B"), e >= r
    return ("A" if s == "down" else "B"), np.arange(c.intermediate_size) >= ks["mlp"]


@pytest.mark.parametrize("how", ["rate", "half"])
def test_gradients_vanish_on_dropped_channels(fam, how):
    """At a sampled rate (and at keeps that cut everything) the LoRA parameters that touch dropped channels -- B rows
    of dropped outputs (in_proj's z / x / B / C rows, q / k / v rows, gate / up rows), A columns of dropped inputs
    (out_proj's head channels, o_proj's head dims, down's channels) -- get exactly zero gradient; kept ones do not."""
    kind, art, vocab = fam
    tm = load_twin(art, rank=4, max_seq=32)
    _randomize_lora(tm)
    if how == "rate":
        tm.set_rate(0.35)
    else:
        tm.set_keep(_half_keeps(tm))
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, vocab, size=(2, 19)))
    tm(ids).logsumexp(-1).mean().backward()
    cut = 0
    for i, names in enumerate(tm.names):
        for s in names:
            which, dropped = _dropped(tm, s, tm.keeps[i])
            lo = tm.lora[f"l{i}_{s}"]
            grad = lo.B.grad if which == "B" else lo.A.grad.T
            assert grad.shape[0] == dropped.size, (kind, i, s)
            cut += int(dropped.sum())
            assert torch.count_nonzero(grad[torch.from_numpy(dropped)]) == 0, (kind, i, s)
            assert torch.count_nonzero(grad[torch.from_numpy(~dropped)]) > 0, (kind, i, s)
    assert cut > 0
    bad = [dict(k) for k in tm.full]
    bad[0] = {c: v + 1 for c, v in bad[0].items()}
    with pytest.raises(uniql.InvalidArgumentError, match="layer 0"):
        tm.set_keep(bad)


def test_old_names_still_import():
    """The former twin modules re-export the one class."""
    from uniql.finetune.torch_hybrid import HybridTorchModel
    from uniql.finetune.torch_model import ElasticTorchModel

    assert ElasticTorchModel is TwinModel and HybridTorchModel is TwinModel


def test_training_lowers_loss_merge_is_exact_and_kd(fam):
    """ce training (30 steps) lowers the held-out loss at rate 0 and 35% by more than 0.4 nats (measured: Llama 1.22,
    Qwen2 0.46, Mamba2 3.8-4.1, Nemotron-H 1.05, Bamba 1.12); merging keeps the function at every rate; kd: at
    rate 0 with zero patches the student is the teacher (KL 0), kd steps bring the 35% student closer (measured KL
    x 0.79 Mamba2, x 0.61 Nemotron-H, x 0.26 Bamba) and the patches then act at rate 0 too."""
    import torch.nn.functional as F


    kind, art, vocab = fam
    tm = load_twin(art, rank=8, max_seq=32, seed=0)
    windows = _pattern(vocab).reshape(-1, 32).astype(np.int64)
    held = _pattern(vocab)[5:5 + 32]

    def loss_at(rate: float) -> float:
        tm.set_rate(rate)
        return float(F.cross_entropy(torch.from_numpy(_logits(tm, held[:-1])), torch.from_numpy(held[1:])))

    before = [loss_at(r) for r in (0.0, 0.35)]
    run = train(tm, windows, FinetuneOptions(steps=30, lr=5e-3, warmup=3, seq_len=32, batch=4))
    after = [loss_at(r) for r in (0.0, 0.35)]
    assert run["loss_last"] < run["loss_first"] and sum(run["rates_sampled"].values()) == 30
    assert all(a < b - 0.4 for a, b in zip(after, before)), (kind, before, after)
    ids = np.random.default_rng(3).integers(0, vocab, size=30)
    lora = {}
    for rate in RATES:
        tm.set_rate(rate)
        lora[rate] = _logits(tm, ids)
    tm.merge_()
    assert len(tm.lora) == 0
    for rate in RATES:
        tm.set_rate(rate)
        assert _rel(_logits(tm, ids), lora[rate]) <= MERGE_REL_TOL, (kind, rate)

    st = load_twin(art, rank=8, max_seq=32)
    pat = _pattern(vocab)
    x = torch.from_numpy(np.stack([pat[5:36], pat[40:71]]))

    def kl(rate: float) -> float:
        with torch.no_grad():
            st.lora_enabled = False
            st.set_rate(0.0)
            t = st(x)
            st.lora_enabled = True
            st.set_rate(rate)
            s = st(x)
        return float(F.kl_div(F.log_softmax(s, -1).reshape(-1, vocab), F.log_softmax(t, -1).reshape(-1, vocab),
                              log_target=True, reduction="batchmean"))

    assert kl(0.0) < 1e-10
    kl_before = kl(0.35)
    assert kl_before > 1e-6
    run = train(st, windows, FinetuneOptions(steps=24, lr=1e-3, warmup=1, seq_len=32, batch=4, loss="kd",
                                             rate_step=0.35, dropout=0.0))   # rates 0 and 0.35
    assert run["rates_sampled"]["0.35"] > 0 and all(np.isfinite(run["losses"]))
    assert kl(0.35) < 0.9 * kl_before, kind
    assert kl(0.0) > 0


def test_incremental_decoding_and_generated_windows(fam):
    """The cached path (K/V, conv and SSM states) computes the logits of one full forward; generate_windows keeps
    the prompts, samples in-vocabulary tokens, is seeded, and leaves the model's rate and patches as they were."""

    kind, art, vocab = fam
    tm = load_twin(art, rank=4, max_seq=32)
    _randomize_lora(tm, 1)
    tm.set_rate(0.25)
    ids = torch.from_numpy(np.random.default_rng(7).integers(0, vocab, size=(3, 20)))
    with torch.no_grad():
        full = tm(ids)
        cache: list = []
        steps = [tm(ids[:, :11], cache=cache)]
        for t in range(11, 20):
            steps.append(tm(ids[:, t:t + 1], cache=cache, start=t))
    assert _rel(torch.cat(steps, 1).numpy(), full.numpy()) <= RUNTIME_REL_TOL, kind
    prompts = np.asarray(ids[:, :5])
    g1 = generate_windows(tm, prompts, 16, seed=1, batch=2)
    assert g1.shape == (3, 16) and np.array_equal(g1[:, :5], prompts) and g1.min() >= 0 and g1.max() < vocab
    assert np.array_equal(g1, generate_windows(tm, prompts, 16, seed=1, batch=2))
    assert not np.array_equal(g1, generate_windows(tm, prompts, 16, seed=2))
    assert tm.rate == 0.25 and tm.lora_enabled
    with pytest.raises(uniql.InvalidArgumentError, match="start > 0"):
        tm(ids[:, :2], cache=[], start=3)


def test_shared_prefix_cache_serves_a_batch(fam):
    """A prefix run once (batch 1) and then several new tokens per row of a batch after it (attention-only models;
    the cache copied per batch) give the logits of full forwards of prefix + row; with a
    Mamba2 mixer several new tokens after a prefix are refused by name."""
    kind, art, vocab = fam
    tm = load_twin(art, rank=4, max_seq=32)
    _randomize_lora(tm, 2)
    tm.set_rate(0.15)
    g = np.random.default_rng(11)
    prefix = torch.from_numpy(g.integers(0, vocab, size=(1, 9)))
    rows = torch.from_numpy(g.integers(0, vocab, size=(3, 7)))
    with torch.no_grad():
        cache: list = []
        tm(prefix, cache=cache)
        if kind not in ("llama", "qwen2"):
            with pytest.raises(uniql.InvalidArgumentError, match="Mamba2"):
                tm(rows, cache=[dict(c) for c in cache], start=9)
            return
        for _ in range(2):   # the prefix's cache is kept: a second batch reads it unchanged
            got = tm(rows, cache=[dict(c) for c in cache], start=9)
        full = tm(torch.cat((prefix.expand(3, -1), rows), 1))[:, 9:]
    assert _rel(got.numpy(), full.numpy()) <= RUNTIME_REL_TOL, kind


def test_resume_equals_an_uninterrupted_run(tmp_path, fam):
    """Stopped after 3 of 7 steps and resumed from the checkpoint (fresh model, dropout on), training ends with
    exactly the patches and losses of the run that was never stopped."""

    kind, art, vocab = fam
    windows = _pattern(vocab, 4096).reshape(-1, 32).astype(np.int64)
    opts = FinetuneOptions(steps=7, lr=5e-3, warmup=2, seq_len=32, batch=2, eval_every=3, dropout=0.1)
    ev = windows[:3]

    def model():
        torch.manual_seed(0)
        return TwinModel.from_artifact(art, rank=8, max_seq=32, seed=0)

    a = model()
    ra = train(a, windows, opts, eval_windows=ev)
    b = model()
    rb1 = train(b, windows, opts, eval_windows=ev, checkpoint_dir=tmp_path, stop_at=3)
    assert not rb1["finished"] and rb1["steps_done"] == 3 and (tmp_path / "last.pt").is_file()
    torch.manual_seed(123)      # the checkpoint restores the generator
    c = model()
    rc = train(c, windows, opts, eval_windows=ev, checkpoint_dir=tmp_path, resume=True)
    assert rc["finished"] and rc["losses"] == ra["losses"] and rc["best_step"] == ra["best_step"], kind
    sa, sc = a.lora_state(), c.lora_state()
    assert sa.keys() == sc.keys() and all(np.array_equal(sa[k], sc[k]) for k in sa), kind
    with pytest.raises(uniql.InvalidArgumentError, match="other options"):
        train(model(), windows, FinetuneOptions(steps=8, seq_len=32, batch=2), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(uniql.InvalidArgumentError, match="needs a checkpoint"):
        train(model(), windows, opts, checkpoint_dir=tmp_path / "none", resume=True)


def test_choice_scoring_with_a_shared_prefix_equals_plain(fam):
    """benchmarks/finetune_gpu.py's zero-shot scorer: with ``share_prefix`` (the common prefix run once, its K/V
    cache shared by a batch) every pair's log-likelihood equals the plain padded batches' (hybrids: the plain path
    is taken). Pairs as MMLU's: a shared few-shot prefix, questions of several lengths, one-token letters; plus
    multi-token continuations and inputs that share nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_gpu", Path(__file__).parents[1] / "benchmarks" / "finetune_gpu.py")
    fg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fg)
    kind, art, vocab = fam
    tm = load_twin(art, rank=0, max_seq=32)
    tm.set_rate(0.25)
    g = np.random.default_rng(5)
    shots = [list(g.integers(0, vocab, size=12)) for _ in range(2)]
    pairs = []
    for shot in shots:
        for q in range(5):
            ctx = shot + list(g.integers(0, vocab, size=int(g.integers(1, 8))))
            pairs += [(ctx, [int(x)]) for x in g.integers(0, vocab, size=4)]
        pairs.append((shot + [1, 2], list(g.integers(0, vocab, size=3))))
    pairs += [(list(g.integers(0, vocab, size=int(n))), list(g.integers(0, vocab, size=2))) for n in (3, 9, 14)]
    plain = fg._choice_lls(tm, pairs, torch.device("cpu"), batch_tokens=40)
    starts: list = []
    forward = tm.forward
    tm.forward = lambda ids, cache=None, start=0: starts.append(start) or forward(ids, cache=cache, start=start)
    shared = fg._choice_lls(tm, pairs, torch.device("cpu"), batch_tokens=40, share_prefix=8)
    # the two few-shot groups ran after their 12-token prefix (attention-only models)
    assert (sorted(set(starts) - {0}) == [12]) == (kind in ("llama", "qwen2")), (kind, starts)
    assert len(plain) == len(pairs) and all(np.isfinite(plain))
    np.testing.assert_allclose(shared, plain, rtol=1e-5, atol=1e-4)
