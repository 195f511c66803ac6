"""Recovery fine-tuning of Mamba2 / Nemotron-H / Bamba artifacts (uniql.finetune.torch_hybrid, uniql.finetune,
uniql.compress.requantize) on small random-weight models.

The PyTorch twin must compute what the C runtime deploys at every rate and at explicit keeps that cut every
component (Mamba head channels and state dims, attention head dims with no / partial RoPE, MLP channels) -- the
proof that the training masks are the deployment's; the LoRA patches must get no gradient on what a rate drops;
the fine-tuned artifact must load, switch rates and equal the twin with its patches; quantize_artifact of an
untuned float32 artifact must be byte-identical to compress(quantize=True).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql.formats import safetensors as st
from uniql.formats.artifact import REST_FILE, head_rows, qk_head_rows

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_ssm import ARCHS, make_hf  # noqa: E402  (small random HF models of each architecture, chunk 8)
from uniql.finetune import FinetuneOptions, finetune, generate_windows, load_lora, merge_lora, train  # noqa: E402
from uniql.finetune.torch_hybrid import HybridTorchModel, ssd_scan  # noqa: E402
from uniql.finetune.torch_model import load_twin  # noqa: E402

# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
RUNTIME_REL_TOL = 1e-5   # twin vs C runtime, float32 (measured <= 7.2e-7: other summation orders, chunked SSD both)
MERGE_REL_TOL = 1e-5     # merged weights vs the patches in the forward
SCAN_REL_TOL = 1e-5      # chunked SSD vs the float64 recurrence
VOCAB, SEQ, NSAMP = 128, 24, 4
RATES = (0.0, 0.15, 0.25, 0.35)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


def _logits(tm, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tm(torch.from_numpy(np.asarray(ids, np.int64)))[0].numpy()


def _half_keeps(tm: HybridTorchModel) -> list[dict[str, int]]:
    """Keeps that cut every component of every layer (attention: whole RoPE pairs + pass dims)."""
    return [{c: max(4, v // 2) for c, v in full.items()} for full in tm.full]


def tm_names(art: Path) -> list[dict[str, str]]:
    """Per layer, the linears that carry a patch: in/out (Mamba), q/k/v/o, gate/up/down."""
    return load_twin(art, max_seq=2).names


def _pattern_tokens(n: int = 2048, seed: int = 0) -> np.ndarray:
    period = np.random.default_rng(seed).integers(0, VOCAB, size=24)
    return np.tile(period, n // 24 + 1)[:n]


# --------------------------------------------------------------------------------- twin == runtime ----
def test_twin_equals_runtime_at_every_rate(hy):
    arch, _, art = hy
    tm = load_twin(art, max_seq=64)
    assert isinstance(tm, HybridTorchModel)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=37)   # several scan chunks of 8, one partial
    sizes = set()
    for rate in RATES:
        tm.set_rate(rate)
        sizes.add(json.dumps(tm.keeps))
        m = uniql.load(art, rate=rate, kv_dtype="fp32")
        assert tm.keeps == m.keep_sizes(rate)
        assert _rel(_logits(tm, ids), m.logits(ids)) <= RUNTIME_REL_TOL, (arch, rate)
    assert len(sizes) == len(RATES)     # every rate prunes differently
    # explicit keeps that cut every component (the rates above leave some layers whole)
    keeps = _half_keeps(tm)
    tm.set_keep(keeps)
    m = uniql.load(art, kv_dtype="fp32")
    for i, ks in enumerate(keeps):
        m.set_keep(i, **ks)
    assert _rel(_logits(tm, ids), m.logits(ids)) <= RUNTIME_REL_TOL, arch
    tm.scan_chunk = 5   # the twin's own SSD chunking (the runtime's is 8) changes nothing but rounding
    assert _rel(_logits(tm, ids), m.logits(ids)) <= RUNTIME_REL_TOL, arch


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


# ---------------------------------------------------------------------------------------- masks ----
def _kept_index(tm: HybridTorchModel, i: int, s: str, ks: dict[str, int]) -> tuple[str, np.ndarray, int]:
    """(which LoRA factor carries the pruned axis: "B" rows or "A" columns, kept indices, full size)."""
    hc = tm.hc
    if s in ("in", "out"):
        H, P, G, N = hc.ssm_heads, hc.ssm_head_dim, hc.ssm_groups, hc.ssm_state
        zi = head_rows(H, P, ks["ssm_head"])
        if s == "out":
            return "A", zi, H * P
        bi = head_rows(G, N, ks["ssm_state"])
        HP, GN = H * P, G * N
        rows = np.concatenate([zi, HP + zi, 2 * HP + bi, 2 * HP + GN + bi, 2 * HP + 2 * GN + np.arange(H)])
        return "B", rows, 2 * HP + 2 * GN + H
    if s in ("q", "k", "v", "o"):
        nh, nkv, d, r = hc.num_heads, hc.num_kv_heads, hc.head_dim, ks["attn"]
        if s == "o":
            return "A", head_rows(nh, d, r), nh * d
        heads = nh if s == "q" else nkv
        return "B", (head_rows(heads, d, r) if s == "v" else qk_head_rows(tm.rope, heads, d, r)), heads * d
    k, DI = ks["mlp"], hc.intermediate_size
    return ("A" if s == "down" else "B"), np.arange(k), DI


@pytest.mark.parametrize("how", ["rate", "half"])
def test_gradients_vanish_on_dropped_channels(hy, how):
    """At a sampled rate (and at keeps that cut everything), the LoRA parameters that touch dropped channels --
    B rows of dropped outputs (in_proj's z/x/B/C rows, q/k/v rows, gate/up rows), A columns of dropped inputs
    (out_proj's head channels, o_proj's head dims, down's channels) -- get exactly zero gradient; kept ones
    do not."""
    arch, _, art = hy
    tm = load_twin(art, rank=4, max_seq=32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lo in tm.lora.values():
            lo.B.copy_(torch.randn(lo.B.shape, generator=g) * 0.05)
    if how == "rate":
        tm.set_rate(0.35)
    else:
        tm.set_keep(_half_keeps(tm))
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, VOCAB, size=(2, 19)))
    tm(ids).logsumexp(-1).mean().backward()
    cut = 0
    for i, names in enumerate(tm.names):
        for s in names:
            which, kept, full = _kept_index(tm, i, s, tm.keeps[i])
            lo = tm.lora[f"l{i}_{s}"]
            grad = lo.B.grad if which == "B" else lo.A.grad.T
            dropped = np.setdiff1d(np.arange(full), kept)
            cut += dropped.size
            assert torch.count_nonzero(grad[torch.from_numpy(dropped)]) == 0, (arch, i, s)
            assert torch.count_nonzero(grad[torch.from_numpy(kept)]) > 0, (arch, i, s)
    assert cut > 0
    bad = [dict(k) for k in tm.full]
    bad[0] = {c: v + 1 for c, v in bad[0].items()}
    with pytest.raises(uniql.InvalidArgumentError, match="layer 0"):
        tm.set_keep(bad)


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
    state, lrec, rank, alpha = load_lora(tmp_path / "l.st")
    assert lrec == rec
    assert set(state) == {f"l{i}_{s}.{f}" for i, names in enumerate(tm_names(art)) for s in names for f in "AB"}
    tm = load_twin(art, rank=rank, alpha=alpha, max_seq=32)
    tm.load_lora_state(state)
    ids = np.random.default_rng(4).integers(0, VOCAB, size=24)
    m = uniql.load(out, rate=0.15, kv_dtype="fp32")
    for rate in (0.15, 0.25, 0.35):
        m.set_rate(rate)
        tm.set_rate(rate)
        got = m.logits(ids)
        assert _rel(got, _logits(tm, ids)) <= RUNTIME_REL_TOL, rate
        np.testing.assert_array_equal(got, uniql.load(out, rate=rate, kv_dtype="fp32").logits(ids))
    assert _rel(uniql.load(out).logits(ids), uniql.load(art).logits(ids)) > 1e-4   # the weights changed
    merged = merge_lora(art, tmp_path / "l.st", tmp_path / "merged")
    for f in sorted(out.glob("model-*.safetensors")):
        assert f.read_bytes() == (merged / f.name).read_bytes(), f.name


def test_training_lowers_loss_merge_is_exact_and_kd(hy):
    """ce training lowers the loss at rate 0 and 35%; merging keeps the function at every rate; kd: at rate 0
    with zero patches the student is the teacher (KL 0), and kd steps bring the 35% student closer."""
    import torch.nn.functional as F

    arch, _, art = hy
    tm = load_twin(art, rank=8, max_seq=32, seed=0)
    windows = _pattern_tokens().reshape(-1, 32).astype(np.int64)
    held = _pattern_tokens(seed=0)[5:5 + 32]

    def loss_at(rate: float) -> float:
        tm.set_rate(rate)
        return float(F.cross_entropy(torch.from_numpy(_logits(tm, held[:-1])), torch.from_numpy(held[1:])))

    before = [loss_at(r) for r in (0.0, 0.35)]
    run = train(tm, windows, FinetuneOptions(steps=30, lr=5e-3, warmup=3, seq_len=32, batch=4))
    after = [loss_at(r) for r in (0.0, 0.35)]
    assert run["loss_last"] < run["loss_first"]
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)
    ids = np.random.default_rng(3).integers(0, VOCAB, size=30)
    lora = {}
    for rate in RATES:
        tm.set_rate(rate)
        lora[rate] = _logits(tm, ids)
    tm.merge_()
    assert len(tm.lora) == 0
    for rate in RATES:
        tm.set_rate(rate)
        assert _rel(_logits(tm, ids), lora[rate]) <= MERGE_REL_TOL, rate

    st = load_twin(art, rank=8, max_seq=32)
    pat = _pattern_tokens()
    x = torch.from_numpy(np.stack([pat[5:36], pat[40:71]]))

    def kl(rate: float) -> float:
        with torch.no_grad():
            st.lora_enabled = False
            st.set_rate(0.0)
            t = st(x)
            st.lora_enabled = True
            st.set_rate(rate)
            s = st(x)
        return float(F.kl_div(F.log_softmax(s, -1).reshape(-1, VOCAB), F.log_softmax(t, -1).reshape(-1, VOCAB),
                              log_target=True, reduction="batchmean"))

    assert kl(0.0) < 1e-10
    kl_before = kl(0.35)
    assert kl_before > 1e-6
    run = train(st, windows, FinetuneOptions(steps=24, lr=1e-3, warmup=1, seq_len=32, batch=4, loss="kd",
                                             rate_step=0.35, dropout=0.0))   # rates 0 and 0.35
    # measured: KL at 35% x 0.79 (Mamba2), 0.61 (Nemotron-H), 0.26 (Bamba)
    assert run["rates_sampled"]["0.35"] > 0 and all(np.isfinite(run["losses"]))
    assert kl(0.35) < 0.9 * kl_before, arch


def test_incremental_decoding_and_generated_windows(hy):
    """The conv / SSM state and K/V cache path computes the same logits as one full forward; generate_windows
    works on a hybrid twin and leaves its rate and patches as they were."""
    _, _, art = hy
    tm = load_twin(art, rank=4, max_seq=32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lo in tm.lora.values():
            lo.B.copy_(torch.randn(lo.B.shape, generator=g) * 0.05)
    tm.set_rate(0.25)
    ids = torch.from_numpy(np.random.default_rng(7).integers(0, VOCAB, size=(3, 20)))
    with torch.no_grad():
        full = tm(ids)
        cache: list = []
        steps = [tm(ids[:, :11], cache=cache)]
        for t in range(11, 20):
            steps.append(tm(ids[:, t:t + 1], cache=cache, start=t))
    assert _rel(torch.cat(steps, 1).numpy(), full.numpy()) <= RUNTIME_REL_TOL
    prompts = np.asarray(ids[:, :5])
    g1 = generate_windows(tm, prompts, 16, seed=1, batch=2)
    assert g1.shape == (3, 16) and np.array_equal(g1[:, :5], prompts) and g1.min() >= 0 and g1.max() < VOCAB
    assert np.array_equal(g1, generate_windows(tm, prompts, 16, seed=1, batch=2))
    assert tm.rate == 0.25 and tm.lora_enabled
    with pytest.raises(uniql.InvalidArgumentError, match="start > 0"):
        tm(ids[:, :2], cache=[], start=3)


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
    assert _rel(_logits(tm, ids), uniql.load(f, rate=0.35).logits(ids)) <= RUNTIME_REL_TOL


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
        got, rt = _logits(tm, ids), uniql.load(art, rate=rate).logits(ids)
        assert _rel(got, f64) <= 1e-4 and _rel(rt, f64) <= 2e-4 and _rel(got, rt) <= 1e-4, rate


@pytest.mark.slow
@pytest.mark.parametrize("hy", ["bamba"], indirect=True)
def test_two_processes_give_the_merged_weights_of_one_hybrid(tmp_path, hy):
    """torchrun --nproc-per-node 2 (gloo, global batch 4 = 2 x 2) on a hybrid artifact writes the merged weights of
    one process with batch 4 (measured max abs difference 9e-8)."""
    import os
    import subprocess
    import sys

    from uniql.formats.safetensors import load_file

    _, _, art = hy
    tok = tmp_path / "tokens.npy"
    np.save(tok, _pattern_tokens())
    args = [str(art), "--tokens", str(tok), "--steps", "4", "--lr", "5e-3", "--seq-len", "32", "--batch", "4",
            "--dropout", "0", "--eval-windows", "2", "--eval-every", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    one = subprocess.run([sys.executable, "-m", "uniql.finetune", *args, "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29500 + (os.getpid() + 7) % 1000), "-m", "uniql.finetune", *args,
                          "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    for f in sorted((tmp_path / "one").glob("model-layer-*.safetensors")):
        a, b = load_file(f), load_file(tmp_path / "two" / f.name)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5 * max(1.0, float(np.abs(a[k]).max())))
