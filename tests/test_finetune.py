"""Masked LoRA recovery fine-tuning (uniql.finetune, uniql.finetune.torch_model) on small random Llama/Qwen2 artifacts.

The PyTorch model must compute exactly what the C runtime deploys at every rate (that is the proof that the
training masks are the deployment's), the masks must cut exactly the pruned channels, training must lower the
loss, the merge must be exact, and the written artifact must load and switch rates like any other.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql.compress.pipeline import compress

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from uniql.finetune import FinetuneOptions, OutputExistsError, finetune, rate_grid, train  # noqa: E402
from uniql.finetune.torch_model import LINEARS, ElasticTorchModel  # noqa: E402

# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
RUNTIME_REL_TOL = 1e-5     # torch model vs C runtime, float32 (measured ~4e-7: different summation orders)
MERGE_REL_TOL = 1e-5       # merged weights vs LoRA patches in the forward (one float32 add per weight)
VOCAB, SEQ, NSAMP = 256, 32, 8
RATES = (0.0, 0.15, 0.25, 0.35)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one torch thread is far faster than two on a busy machine (and results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make(tmp: Path, kind: str) -> Path:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
        with torch.no_grad():  # random q/k/v biases (zero-initialised otherwise)
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.5)
    else:
        extra = {}
        if kind == "llama3":  # Llama-3 rope scaling: low frequencies are rescaled at this short original length
            extra = dict(rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(head_dim=16, **common, **extra))
    d = tmp / kind
    model.save_pretrained(d)
    return d


def _art(tmp: Path, kind: str, **kw) -> Path:
    src = _make(tmp, kind)
    calib = np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))
    kw.setdefault("quantize", False)
    return compress(src, tmp / f"{kind}-{kw.get('dtype', 'float32')}-{'q4' if kw['quantize'] else 'f'}",
                    calibration=calib, num_samples=NSAMP, seq_len=SEQ, progress=False, **kw)


@pytest.fixture(scope="module")
def llama_art(tmp_path_factory):
    return _art(tmp_path_factory.mktemp("ft"), "llama")


def _pattern_tokens(n: int = 4096, seed: int = 0) -> np.ndarray:
    """Learnable text: a fixed random sequence of 24 tokens repeated (the model can learn to continue it)."""
    period = np.random.default_rng(seed).integers(0, VOCAB, size=24)
    return np.tile(period, n // 24 + 1)[:n]


def _logits(tm: ElasticTorchModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tm(torch.from_numpy(ids.astype(np.int64)))[0].numpy()


@pytest.mark.parametrize("kind,dtype", [("llama", "float32"), ("qwen2", "float32"), ("llama3", "float32"),
                                        ("llama", "float16")])
def test_torch_model_equals_runtime(tmp_path, kind, dtype):
    """The training model computes what uniql.load deploys, at several rates (masks = deployment)."""
    art = _art(tmp_path, kind, dtype=dtype)
    tm = ElasticTorchModel.from_artifact(art, max_seq=64)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=40)
    sizes = set()
    for rate in RATES:
        tm.set_rate(rate)
        sizes.add(tuple(tm.keeps))
        assert _rel(_logits(tm, ids), uniql.load(art, rate=rate, kv_dtype="fp32").logits(ids)) <= RUNTIME_REL_TOL, rate
    assert len(sizes) == len(RATES)  # every rate really prunes differently


def _randomize_lora(tm: ElasticTorchModel, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lo in tm.lora.values():
            lo.B.copy_(torch.randn(lo.B.shape, generator=g) * 0.05)


def test_masks_cut_exactly_the_pruned_channels(llama_art):
    """At a rate, the LoRA parameters that touch dropped channels (B rows of q/k/v/gate/up outputs, A columns of
    o/down inputs) get exactly zero gradient, and the kept ones do not."""
    tm = ElasticTorchModel.from_artifact(llama_art, rank=8, max_seq=64)
    _randomize_lora(tm)
    tm.set_rate(0.35)
    d, DI, nh, nkv = tm.tc.head_dim, tm.tc.intermediate_size, tm.tc.num_attention_heads, tm.tc.num_key_value_heads
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, VOCAB, size=(2, 24)))
    tm(ids).logsumexp(-1).mean().backward()
    for i, (k, r) in enumerate(tm.keeps):
        assert k < DI and r < d
        for s in LINEARS:
            lo = tm.lora[f"l{i}_{s}"]
            if s in ("q", "k", "v"):
                g = lo.B.grad.reshape(nh if s == "q" else nkv, d, -1)
                kept, dropped = g[:, :r], g[:, r:]
            elif s in ("gate", "up"):
                kept, dropped = lo.B.grad[:k], lo.B.grad[k:]
            elif s == "o":
                g = lo.A.grad.reshape(-1, nh, d)
                kept, dropped = g[:, :, :r], g[:, :, r:]
            else:  # down
                kept, dropped = lo.A.grad[:, :k], lo.A.grad[:, k:]
            assert torch.count_nonzero(dropped) == 0, (i, s)
            assert torch.count_nonzero(kept) > 0, (i, s)


def test_training_lowers_loss_and_merge_is_exact(llama_art):
    tm = ElasticTorchModel.from_artifact(llama_art, rank=8, max_seq=64, seed=0)
    windows = _pattern_tokens().reshape(-1, 32)[:, :32].astype(np.int64)
    held = _pattern_tokens(seed=0)[5:5 + 32]

    def loss_at(rate: float) -> float:
        tm.set_rate(rate)
        lg = _logits(tm, held[:-1])
        return float(torch.nn.functional.cross_entropy(torch.from_numpy(lg), torch.from_numpy(held[1:])))

    before = [loss_at(r) for r in (0.0, 0.35)]
    run = train(tm, windows, FinetuneOptions(steps=30, lr=5e-3, warmup=3, seq_len=32, batch=4))
    after = [loss_at(r) for r in (0.0, 0.35)]
    assert run["loss_last"] < run["loss_first"]
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)
    assert sum(run["rates_sampled"].values()) == 30
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


def test_rate_grid():
    rates, p = rate_grid(0.35)
    np.testing.assert_allclose(rates, [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35])
    assert abs(p.sum() - 1) < 1e-12 and p[-1] == p.max() and np.all(np.diff(p) > 0)
    np.testing.assert_allclose(p[:-1] / p[1:], np.exp(-0.1))
    rates, _ = rate_grid(0.12)
    np.testing.assert_allclose(rates, [0, 0.05, 0.1, 0.12])


def test_finetune_writes_a_working_artifact(tmp_path, llama_art):
    """finetune() end to end: the artifact loads at a rate, set_rate works, and the C runtime computes what the
    saved LoRA patches compute in the torch model; merging the saved patches elsewhere writes the same artifact;
    the JSON lines log has every step and evaluation; the best evaluation's patches are the ones kept."""
    from uniql.finetune import load_lora, merge_lora
    from uniql.formats.safetensors import load_file

    kw = dict(steps=6, lr=5e-3, seq_len=32, batch=2, seed=3, eval_every=2, eval_windows=4)
    calib = _pattern_tokens()
    out = finetune(llama_art, tmp_path / "ft", calibration=calib, progress=False, save_lora_to=tmp_path / "l.st",
                   log_jsonl=tmp_path / "log.jsonl", checkpoint_dir=tmp_path / "ck", **kw)
    assert not (tmp_path / "ft.partial").exists()
    cfg = json.loads((out / "config.json").read_text())
    rec = cfg["uniql"]["finetune"]
    assert rec["method"] == "masked-lora" and rec["steps"] == 6 and rec["rank"] == 8 and rec["alpha"] == 16
    assert rec["dropout"] == 0.05 and rec["device"] == "cpu" and rec["precision"] == "fp32"
    assert json.loads((out / "uniql_report.json").read_text())["finetune"] == rec
    assert cfg["uniql_tensors"] == json.loads((llama_art / "config.json").read_text())["uniql_tensors"]
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["event"] == "step"]
    evals = [x for x in lines if x["event"] == "eval"]
    assert [x["step"] for x in steps] == list(range(1, 7)) and [x["step"] for x in evals] == [2, 4, 6]
    assert all(x["tokens_per_s"] > 0 and np.isfinite(x["loss"]) for x in steps)
    best = min(evals, key=lambda x: x["loss"])
    assert rec["best_step"] == best["step"] and (tmp_path / "ck" / "best.pt").is_file()

    state, lrec, rank, alpha = load_lora(tmp_path / "l.st")
    assert lrec == rec and (rank, alpha) == (8, 16.0)
    best_ck = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    assert all(np.array_equal(state[k], v.numpy()) for k, v in best_ck["lora"].items())
    tm = ElasticTorchModel.from_artifact(llama_art, rank=8, alpha=16, max_seq=32)
    tm.load_lora_state(state)
    ids = np.random.default_rng(4).integers(0, VOCAB, size=24)
    m = uniql.load(out, rate=0.15, kv_dtype="fp32")
    for rate in (0.15, 0.25, 0.35):
        m.set_rate(rate)
        tm.set_rate(rate)
        got = m.logits(ids)
        assert _rel(got, _logits(tm, ids)) <= RUNTIME_REL_TOL, rate
        np.testing.assert_array_equal(got, uniql.load(out, rate=rate, kv_dtype="fp32").logits(ids))
    assert _rel(uniql.load(out).logits(ids), uniql.load(llama_art).logits(ids)) > 1e-4  # the weights changed
    merged = merge_lora(llama_art, tmp_path / "l.st", tmp_path / "merged")
    for f in sorted(out.glob("model-*.safetensors")):
        a, b = load_file(f), load_file(merged / f.name)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), f.name


def test_resume_equals_an_uninterrupted_run(tmp_path, llama_art):
    """Stopped after 3 of 7 steps and resumed from the checkpoint (fresh model, dropout on), training ends with
    exactly the patches and losses of the run that was never stopped."""
    windows = _pattern_tokens().reshape(-1, 32).astype(np.int64)
    opts = FinetuneOptions(steps=7, lr=5e-3, warmup=2, seq_len=32, batch=2, eval_every=3, dropout=0.1)
    ev = windows[:3]

    def model():
        torch.manual_seed(0)
        return ElasticTorchModel.from_artifact(llama_art, rank=8, max_seq=32, seed=0)

    a = model()
    ra = train(a, windows, opts, eval_windows=ev)
    b = model()
    rb1 = train(b, windows, opts, eval_windows=ev, checkpoint_dir=tmp_path, stop_at=3)
    assert not rb1["finished"] and rb1["steps_done"] == 3 and (tmp_path / "last.pt").is_file()
    torch.manual_seed(123)      # the checkpoint restores the generator
    c = model()
    rc = train(c, windows, opts, eval_windows=ev, checkpoint_dir=tmp_path, resume=True)
    assert rc["finished"] and rc["losses"] == ra["losses"] and rc["best_step"] == ra["best_step"]
    sa, sc = a.lora_state(), c.lora_state()
    assert all(np.array_equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(uniql.InvalidArgumentError, match="other options"):
        train(model(), windows, FinetuneOptions(steps=8, seq_len=32, batch=2), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(uniql.InvalidArgumentError, match="needs a checkpoint"):
        train(model(), windows, opts, checkpoint_dir=tmp_path / "none", resume=True)


def test_distillation_teacher_is_rate_zero_without_lora(llama_art):
    """kd: at rate 0 with the patches still zero the student is the teacher (KL 0); at 35% it is not, and kd steps
    bring the pruned student's distribution closer to the teacher's (measured: 1.19e-3 -> 0.95e-3)."""
    import torch.nn.functional as F

    tm = ElasticTorchModel.from_artifact(llama_art, rank=8, max_seq=32)
    ids = torch.from_numpy(np.random.default_rng(5).integers(0, VOCAB, size=(2, 31)))

    def kl(rate: float) -> float:
        with torch.no_grad():
            tm.lora_enabled = False
            tm.set_rate(0.0)
            t = tm(ids)
            tm.lora_enabled = True
            tm.set_rate(rate)
            s = tm(ids)
        return float(F.kl_div(F.log_softmax(s, -1).reshape(-1, VOCAB), F.log_softmax(t, -1).reshape(-1, VOCAB),
                              log_target=True, reduction="batchmean"))

    assert kl(0.0) < 1e-10
    before = kl(0.35)
    assert before > 1e-3
    windows = np.random.default_rng(6).integers(0, VOCAB, size=(64, 32))
    run = train(tm, windows, FinetuneOptions(steps=24, lr=1e-3, warmup=1, seq_len=32, batch=4, loss="kd",
                                             rate_step=0.35, dropout=0.0))   # rates 0 and 0.35
    assert run["rates_sampled"]["0.35"] > 0 and all(np.isfinite(run["losses"]))
    assert kl(0.35) < 0.9 * before
    assert kl(0.0) > 0  # the patches now act at rate 0 too


def test_incremental_decoding_and_generated_windows(llama_art):
    """The K/V cache path computes the same logits as one full forward; generate_windows keeps the prompts,
    samples in-vocabulary tokens, is seeded, and leaves the model's rate and patches as they were."""
    from uniql.finetune import generate_windows

    tm = ElasticTorchModel.from_artifact(llama_art, rank=8, max_seq=32)
    _randomize_lora(tm)
    ids = torch.from_numpy(np.random.default_rng(7).integers(0, VOCAB, size=(3, 20)))
    with torch.no_grad():
        full = tm(ids)
        cache: list = []
        steps = [tm(ids[:, :12], cache=cache)]
        for t in range(12, 20):
            steps.append(tm(ids[:, t:t + 1], cache=cache, start=t))
    inc = torch.cat(steps, 1)
    assert float((inc - full).abs().max() / full.abs().max()) < 1e-5
    tm.set_rate(0.25)
    prompts = np.asarray(ids[:, :5])
    g1 = generate_windows(tm, prompts, 16, seed=1, batch=2)
    assert g1.shape == (3, 16) and np.array_equal(g1[:, :5], prompts) and g1.min() >= 0 and g1.max() < VOCAB
    assert np.array_equal(g1, generate_windows(tm, prompts, 16, seed=1, batch=2))
    assert not np.array_equal(g1, generate_windows(tm, prompts, 16, seed=2))
    assert tm.rate == 0.25 and tm.lora_enabled
    with pytest.raises(uniql.InvalidArgumentError, match="start > 0"):
        tm(ids[:, :2], cache=[], start=3)


def test_two_processes_give_the_merged_weights_of_one(tmp_path, llama_art):
    """torchrun --nproc-per-node 2 -m uniql.finetune (gloo on the CPU, global batch 4 = 2 x 2) writes the same
    merged weights as one process with batch 4 (float tolerance: the gradient is averaged in another order);
    only rank 0 writes."""
    import os
    import subprocess

    from uniql.formats.safetensors import load_file

    tok = tmp_path / "tokens.npy"
    np.save(tok, _pattern_tokens(2048))
    args = [str(llama_art), "--tokens", str(tok), "--steps", "4", "--lr", "5e-3", "--seq-len", "32", "--batch", "4",
            "--dropout", "0", "--eval-windows", "2", "--eval-every", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    one = subprocess.run([sys.executable, "-m", "uniql.finetune", *args, "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(29500 + os.getpid() % 1000), "-m", "uniql.finetune", *args,
                          "-o", str(tmp_path / "two"), "--log-jsonl", str(tmp_path / "two.jsonl")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two", "two.jsonl"]
    rec = json.loads((tmp_path / "two" / "config.json").read_text())["uniql"]["finetune"]
    assert rec["world_size"] == 2 and rec["batch"] == 4
    base = load_file(llama_art / "model-layer-0001.safetensors")
    for f in sorted((tmp_path / "one").glob("model-layer-*.safetensors")):
        a, b = load_file(f), load_file(tmp_path / "two" / f.name)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5 * max(1.0, float(np.abs(a[k]).max())))
    a = load_file(tmp_path / "one" / "model-layer-0001.safetensors")
    assert any(not np.array_equal(a[k], base[k]) for k in a)   # training changed the weights
    lines = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert sum(x["event"] == "step" for x in lines) == 4


def test_device_choice():
    from uniql.finetune import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(uniql.UnsupportedError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(uniql.InvalidArgumentError, match="device"):
        resolve_device("tpu")


def test_bad_inputs_raise_and_write_nothing(tmp_path, llama_art, monkeypatch):
    out = tmp_path / "o"
    calib = _pattern_tokens()
    for kw, err, msg in ((dict(steps=0), uniql.InvalidArgumentError, "steps"),
                         (dict(lr=-1.0), uniql.InvalidArgumentError, "lr"),
                         (dict(rank=0), uniql.InvalidArgumentError, "rank"),
                         (dict(seq_len=1), uniql.InvalidArgumentError, "seq_len"),
                         (dict(batch=2.5), uniql.InvalidArgumentError, "batch")):
        with pytest.raises(err, match=msg):
            finetune(llama_art, out, calibration=calib, progress=False, **kw)
    with pytest.raises(uniql.InvalidArgumentError, match="fewer than one sequence"):
        finetune(llama_art, out, calibration=np.arange(10), seq_len=32, progress=False)
    with pytest.raises(uniql.InvalidArgumentError, match="not a uniql artifact"):
        finetune(llama_art.parent / "llama", out, progress=False)
    with pytest.raises(uniql.InvalidArgumentError, match="differ"):
        finetune(llama_art, llama_art, overwrite=True, progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        finetune(llama_art, busy, progress=False)
    q4 = _art(tmp_path, "llama", quantize=True)
    with pytest.raises(uniql.UnsupportedError, match="int4 artifact"):
        finetune(q4, out, calibration=calib, progress=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(uniql.UnsupportedError, match="needs PyTorch"):
        finetune(llama_art, out, calibration=calib, progress=False)
    assert not out.exists() and not (tmp_path / "o.partial").exists()
    assert sorted(p.name for p in busy.iterdir()) == ["x"]


def test_quantize_artifact_is_compress_gptq(tmp_path, llama_art):
    """int4 after fine-tuning: quantize_artifact runs compress's GPTQ per layer. On the untuned artifact its
    first layer (same inputs, same Hessians) is byte-identical to compress(quantize=True); later layers differ
    because compress sorts them on int4-propagated inputs. The result loads at any rate and keeps the record."""
    from uniql.compress.requantize import quantize_artifact
    from uniql.formats.safetensors import load_file

    calib = np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))
    q_ref = _art(tmp_path, "llama", quantize=True, precision={})  # int4 everywhere, as quantize_artifact
    q = quantize_artifact(llama_art, tmp_path / "rq", calibration=calib, num_samples=NSAMP, seq_len=SEQ,
                          precision={}, progress=False)
    a, b = load_file(q_ref / "model-layer-0000.safetensors"), load_file(q / "model-layer-0000.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    cfg = json.loads((q / "config.json").read_text())
    assert cfg["uniql"]["quantization"]["bits"] == 4
    assert cfg["uniql_tensors"] == json.loads((q_ref / "config.json").read_text())["uniql_tensors"]
    ids = np.random.default_rng(6).integers(0, VOCAB, size=20)
    m = uniql.load(q, rate=0.15)
    for rate in (0.15, 0.35):
        m.set_rate(rate)
        np.testing.assert_array_equal(m.logits(ids), uniql.load(q, rate=rate).logits(ids))
        f = uniql.load(llama_art, rate=rate).logits(ids)
        assert np.corrcoef(m.logits(ids).ravel(), f.ravel())[0, 1] > 0.9
    with pytest.raises(uniql.InvalidArgumentError, match="already quantized"):
        quantize_artifact(q, tmp_path / "again", calibration=calib, seq_len=SEQ, progress=False)
    assert not (tmp_path / "again").exists()
    # a fine-tuned artifact keeps its record through quantization
    ft = finetune(llama_art, tmp_path / "ft", calibration=_pattern_tokens(), steps=2, seq_len=32, batch=2,
                  progress=False)
    q2 = quantize_artifact(ft, calibration=calib, num_samples=NSAMP, seq_len=SEQ, progress=False)
    assert q2 == tmp_path / "ft-int4"
    assert json.loads((q2 / "config.json").read_text())["uniql"]["finetune"]["steps"] == 2


def test_cli_finetune_and_quantize(tmp_path, llama_art, capsys):
    from uniql.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("x")
    assert main(["finetune", str(_art(tmp_path, "llama", quantize=True)), "-o", str(tmp_path / "o"),
                 "--steps", "2"]) == 2
    assert "int4 artifact" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse rejects it
        main(["finetune", str(llama_art), "-o", str(tmp_path / "o"), "--steps", "0"])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err
    assert main(["quantize", str(llama_art), "-o", str(tmp_path / "o"), "--file", str(calib)]) == 2
    assert "tokenizer" in capsys.readouterr().err  # the tiny test artifact has no tokenizer for a text
    assert not (tmp_path / "o").exists()
