"""Masked LoRA recovery fine-tuning (uniql.finetune, uniql.finetune.twin) on small random Llama/Qwen2 artifacts.

The PyTorch model must compute exactly what the C runtime deploys at every rate (that is the proof that the
training masks are the deployment's; every family and the gradient masks: tests/test_twin.py), training must lower
the loss, the merge must be exact, and the written artifact must load and switch rates like any other.
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

from uniql.finetune import OutputExistsError, finetune, rate_grid  # noqa: E402
from uniql.finetune.twin import TwinModel  # noqa: E402

# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
RUNTIME_REL_TOL = 1e-5     # torch model vs C runtime, float32 (measured ~4e-7: different summation orders)
VOCAB, SEQ, NSAMP = 256, 32, 8
RATES = (0.0, 0.15, 0.25, 0.35)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
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


def _logits(tm: TwinModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tm(torch.from_numpy(ids.astype(np.int64)))[0].numpy()


@pytest.mark.parametrize("kind,dtype", [("llama3", "float32"), ("llama", "float16")])
def test_torch_model_equals_runtime(tmp_path, kind, dtype):
    """The training model computes what uniql.load deploys, at several rates (masks = deployment): Llama-3 RoPE
    scaling with a tied embedding, a float16 artifact (the plain families: tests/test_twin.py)."""
    art = _art(tmp_path, kind, dtype=dtype)
    tm = TwinModel.from_artifact(art, max_seq=64)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=40)
    sizes = set()
    for rate in RATES:
        tm.set_rate(rate)
        sizes.add(json.dumps(tm.keeps))
        assert _rel(_logits(tm, ids), uniql.load(art, rate=rate, kv_dtype="fp32").logits(ids)) <= RUNTIME_REL_TOL, rate
    assert len(sizes) == len(RATES)  # every rate really prunes differently


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

    state, lrec, rank, alpha = check_tuned_artifact(llama_art, out, tmp_path / "l.st", tmp_path / "merged", VOCAB)
    assert lrec == rec and (rank, alpha) == (8, 16.0)
    best_ck = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    assert all(np.array_equal(state[k], v.numpy()) for k, v in best_ck["lora"].items())


def check_tuned_artifact(art: Path, out: Path, lora_file: Path, merged_dir: Path, vocab: int) -> tuple:
    """A fine-tuned artifact `out` (any family), loaded at 15% and switched live to 25% and 35%, computes what the
    twin of its source `art` computes with the saved patches `lora_file` (and what a fresh load at that rate
    computes); its weights differ from the source's; merge_lora of the patches into `art` writes the same layer
    files byte for byte. Returns load_lora's (state, record, rank, alpha)."""
    from uniql.finetune import load_lora, merge_lora
    from uniql.finetune.twin import load_twin

    state, rec, rank, alpha = load_lora(lora_file)
    tm = load_twin(art, rank=rank, alpha=alpha, max_seq=32)
    tm.load_lora_state(state)
    ids = np.random.default_rng(4).integers(0, vocab, size=24)
    m = uniql.load(out, rate=0.15, kv_dtype="fp32")
    for rate in (0.15, 0.25, 0.35):
        m.set_rate(rate)
        tm.set_rate(rate)
        got = m.logits(ids)
        assert _rel(got, _logits(tm, ids)) <= RUNTIME_REL_TOL, rate
        np.testing.assert_array_equal(got, uniql.load(out, rate=rate, kv_dtype="fp32").logits(ids))
    assert _rel(uniql.load(out).logits(ids), uniql.load(art).logits(ids)) > 1e-4  # the weights changed
    merged = merge_lora(art, lora_file, merged_dir)
    for f in sorted(out.glob("model-*.safetensors")):
        assert f.read_bytes() == (merged / f.name).read_bytes(), f.name
    return state, rec, rank, alpha


def check_one_and_two_processes(art: Path, tokens: np.ndarray, tmp: Path, port_offset: int = 0) -> None:
    """``python -m uniql.finetune`` with batch 4 (-> tmp/one) and ``torchrun --nproc-per-node 2`` (gloo on the CPU,
    global batch 4 = 2 x 2; -> tmp/two, log tmp/two.jsonl; its loss in pieces of 25 of each rank's 62 tokens) on
    `art` write the same merged weights (float tolerance: the gradient is averaged in another order)."""
    import os
    import subprocess

    from uniql.formats.safetensors import load_file

    tok = tmp / "tokens.npy"
    np.save(tok, tokens)
    args = [str(art), "--tokens", str(tok), "--steps", "4", "--lr", "5e-3", "--seq-len", "32", "--batch", "4",
            "--dropout", "0", "--eval-windows", "2", "--eval-every", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    one = subprocess.run([sys.executable, "-m", "uniql.finetune", *args, "-o", str(tmp / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(29500 + (os.getpid() + port_offset) % 1000), "-m", "uniql.finetune",
                          *args, "--loss-chunk", "25", "-o", str(tmp / "two"), "--log-jsonl", str(tmp / "two.jsonl")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    for f in sorted((tmp / "one").glob("model-layer-*.safetensors")):
        a, b = load_file(f), load_file(tmp / "two" / f.name)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5 * max(1.0, float(np.abs(a[k]).max())))


def test_two_processes_give_the_merged_weights_of_one(tmp_path, llama_art):
    """torchrun --nproc-per-node 2 -m uniql.finetune writes the merged weights of one process with the same global
    batch; only rank 0 writes; the log has every step once."""
    from uniql.formats.safetensors import load_file

    check_one_and_two_processes(llama_art, _pattern_tokens(2048), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two", "two.jsonl"]
    rec = json.loads((tmp_path / "two" / "config.json").read_text())["uniql"]["finetune"]
    assert rec["world_size"] == 2 and rec["batch"] == 4
    base = load_file(llama_art / "model-layer-0001.safetensors")
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


def test_merge_scale(tmp_path, llama_art, capsys):
    """merge_lora(scale=s) adds s times the patches: s = 0 keeps the source's weights exactly, the change at s = 0.5
    is half the change at s = 1 in every merged tensor, the record says the scale; a scale out of range or
    --merge-scale without --merge writes nothing."""
    from uniql.cli import main
    from uniql.finetune import merge_lora
    from uniql.formats.safetensors import load_file

    finetune(llama_art, tmp_path / "ft", calibration=_pattern_tokens(), steps=3, lr=5e-3, seq_len=32, batch=2,
             save_lora_to=tmp_path / "l.st", progress=False)
    outs = {s: merge_lora(llama_art, tmp_path / "l.st", tmp_path / f"m{s}", scale=s) for s in (0.0, 0.5, 1.0)}
    assert main(["finetune", str(llama_art), "-o", str(tmp_path / "cli"), "--merge", str(tmp_path / "l.st"),
                 "--merge-scale", "0.5"]) == 0
    changed = 0
    for f in sorted(llama_art.glob("model-layer-*.safetensors")):
        src, z, h, one = (load_file(d / f.name) for d in (llama_art, outs[0.0], outs[0.5], outs[1.0]))
        assert (tmp_path / "cli" / f.name).read_bytes() == (outs[0.5] / f.name).read_bytes()
        for k in src:
            np.testing.assert_array_equal(z[k], src[k])
            d1, dh = one[k].astype(np.float64) - src[k], h[k].astype(np.float64) - src[k]
            np.testing.assert_allclose(dh, 0.5 * d1, rtol=0, atol=1e-6 * max(1.0, float(np.abs(src[k]).max())))
            changed += bool(np.abs(d1).max() > 1e-4)
    assert changed >= 7   # q, k, v, o, gate, up, down of a layer at least
    rec = json.loads((outs[0.5] / "config.json").read_text())["uniql"]["finetune"]
    assert rec["merge_scale"] == 0.5 and "merge_scale" not in json.loads(
        (outs[1.0] / "config.json").read_text())["uniql"]["finetune"]
    for bad in (-0.5, float("nan"), 5.0):
        with pytest.raises(uniql.RangeError, match="merge scale"):
            merge_lora(llama_art, tmp_path / "l.st", tmp_path / "bad", scale=bad)
    assert main(["finetune", str(llama_art), "-o", str(tmp_path / "bad"), "--merge-scale", "0.5"]) == 2
    assert "--merge-scale applies to --merge only" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


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


def test_step_log_is_complete_across_flushes_and_a_resume(tmp_path, llama_art):
    """The losses are read from the device LOG_EVERY steps at a time: the JSON lines still hold every step once,
    in order, each evaluation right after its step, and their losses are the run's (returned) losses; a run
    stopped at a step that is not a flush point and resumed logs the same losses as an uninterrupted one."""
    from uniql.finetune import LOG_EVERY, FinetuneOptions, train

    n = LOG_EVERY + 9
    w = _pattern_tokens().reshape(-1, 32)[:, :32].astype(np.int64)
    o = FinetuneOptions(steps=n, lr=5e-3, warmup=2, seq_len=32, batch=2, eval_every=7, loss="mix", seed=1)

    def run(name, **kw):
        torch.manual_seed(0)
        m = TwinModel.from_artifact(llama_art, rank=4, max_seq=32, lora_dropout=0.05)
        return train(m, w, o, eval_windows=w[:2], log_jsonl=tmp_path / f"{name}.jsonl",
                     checkpoint_dir=tmp_path / f"ck_{name}", **kw)

    whole = run("a")
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    order = [(x["event"], x["step"]) for x in lines if x["event"] in ("step", "eval")]
    want = []
    for s in range(1, n + 1):
        want.append(("step", s))
        if s % 7 == 0 or s == n:
            want.append(("eval", s))
    assert order == want
    steps = [x for x in lines if x["event"] == "step"]
    assert [x["loss"] for x in steps] == [round(v, 5) for v in whole["losses"]]
    assert all("ce" in x and "kd" in x and x["seconds"] > 0 for x in steps)
    run("b", stop_at=LOG_EVERY + 3)
    resumed = run("b", resume=True)
    assert resumed["losses"] == whole["losses"] and resumed["finished"]
    logged = [json.loads(x)["loss"] for x in (tmp_path / "b.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "step"]
    assert logged == [x["loss"] for x in steps]


def _random_patches(m: TwinModel, seed: int) -> None:
    """Non-zero B (zero-initialised: the student would equal the teacher and A would get no gradient)."""
    g = np.random.default_rng(seed)
    m.load_lora_state({k: g.normal(0, 0.05, v.shape).astype(np.float32) for k, v in m.lora_state().items()})


@pytest.mark.parametrize("dtype", ["float64", "float32", "bf16"])
def test_loss_in_pieces_is_the_whole_loss(llama_art, dtype):
    """step_loss with the head and the loss on pieces of 20 tokens (93 per step: the last piece is short), each
    recomputed in the backward pass, gives the loss, its parts and every LoRA gradient of the one-piece path, for
    ce, kd and mix; so does evaluate. float64: to rounding; float32 (also under bf16 autocast, the GPU's
    precision, whose logits are cast to float32 in both paths): to float32 tolerance."""
    from uniql.finetune import FinetuneOptions, evaluate, step_loss

    tol = 1e-10 if dtype == "float64" else 2e-5
    prec = "bf16" if dtype == "bf16" else "fp32"
    dtype = "float32" if dtype == "bf16" else dtype
    ids = torch.from_numpy(_pattern_tokens(seed=2)[:3 * 32].reshape(3, 32).astype(np.int64))
    ids[1] = torch.from_numpy(np.random.default_rng(3).integers(0, VOCAB, 32))   # not all predictable
    m = TwinModel.from_artifact(llama_art, rank=4, max_seq=32, lora_dropout=0.05).to(getattr(torch, dtype))
    _random_patches(m, 1)
    m.train()
    calls, head = [], m.head
    m.head = lambda h: (calls.append(h.shape[:-1].numel()), head(h))[1]   # the tokens of each head call
    for loss in ("ce", "kd", "mix"):
        got = {}
        for chunk in (0, 20):
            o = FinetuneOptions(seq_len=32, batch=3, loss=loss, kd_weight=0.3, loss_chunk=chunk)
            torch.manual_seed(5)   # the same dropout masks (the pieces draw no random numbers)
            for p in m.lora_parameters():
                p.grad = None
            calls.clear()
            total, ce, kd = step_loss(m, ids, o, 0.25, precision=prec)
            before = len(calls)
            total.backward()
            assert (kd is None) == (loss == "ce")
            if chunk:   # pieces of <= 20 tokens (5 per model), their logits made again in the backward pass
                assert max(calls) <= chunk and before == 5 * (1 + (loss != "ce")) and len(calls) == 2 * before
            else:
                assert calls == [93] * (1 + (loss != "ce"))
            got[chunk] = ([float(v.detach()) for v in (total, ce, kd) if v is not None],
                          [p.grad.double().clone() for p in m.lora_parameters()])
        (v0, g0), (v1, g1) = got[0], got[20]
        assert np.all(np.isfinite(v0)) and v0[-1] > 1e-3, (loss, v0)   # a real loss (the KL too)
        np.testing.assert_allclose(v1, v0, rtol=tol, err_msg=loss)
        assert sum(float(g.abs().max() > 0) for g in g0) == len(g0), loss   # every patch gets a gradient
        for a, b in zip(g1, g0):
            assert float((a - b).abs().max() / b.abs().max()) <= tol * 5, loss
    w = _pattern_tokens(seed=4)[:5 * 32].reshape(5, 32).astype(np.int64)
    whole = evaluate(m, w, (0.0, 0.25), batch=3, precision=prec, loss_chunk=0)
    pieces = evaluate(m, w, (0.0, 0.25), batch=3, precision=prec, loss_chunk=20)
    assert whole.keys() == pieces.keys() and all(abs(pieces[k] / whole[k] - 1) <= tol for k in whole)


def test_training_in_pieces_gives_the_same_patches(llama_art, tmp_path):
    """A short float64 run (mix loss, dropout, an evaluation) with the loss in pieces of 20 tokens trains the
    same patches and logs the same losses as with the whole loss at once; so does a run in pieces stopped after
    step 2 and resumed with the whole loss (loss_chunk may change across a resume)."""
    from uniql.finetune import FinetuneOptions, train

    w = _pattern_tokens().reshape(-1, 32)[:40].astype(np.int64)
    res = {}
    for name, chunk, kw in (("whole", 0, {}), ("pieces", 20, {}), ("stopped", 20, {"stop_at": 2}),
                            ("resumed", 0, {"resume": True})):
        o = FinetuneOptions(steps=4, lr=5e-3, warmup=1, seq_len=32, batch=3, eval_every=2, loss="mix", seed=1,
                            loss_chunk=chunk)
        torch.manual_seed(0)
        m = TwinModel.from_artifact(llama_art, rank=4, max_seq=32, lora_dropout=0.05).double()
        ck = tmp_path / "ck" if name in ("stopped", "resumed") else None
        rec = train(m, w, o, eval_windows=w[:3], checkpoint_dir=ck, **kw)
        res[name] = (rec, m.lora_state())
    s0 = res["whole"][1]
    assert any(np.abs(v).max() > 0 for k, v in s0.items() if k.endswith(".B"))   # the patches did train
    assert not res["stopped"][0]["finished"] and res["resumed"][0]["finished"]
    for name, tol in (("pieces", 1e-9), ("resumed", 1e-6)):   # a checkpoint holds the patches in float32
        r1, s1 = res[name]
        np.testing.assert_allclose(r1["losses"], res["whole"][0]["losses"], rtol=tol, err_msg=name)
        assert [e["loss"] for e in r1["evals"]] == [e["loss"] for e in res["whole"][0]["evals"]], name
        for k in s0:
            np.testing.assert_allclose(s1[k], s0[k], rtol=0, atol=tol * max(1.0, np.abs(s0[k]).max()),
                                       err_msg=f"{name} {k}")
