"""Bit-identity recorder / checker of the C runtime's logits, for refactors that must not change behaviour.

    python benchmarks/bitidentity.py record DIR [--kv-dtype fp32|fp16]   # writes DIR/<case>.npy for every case below
    python benchmarks/bitidentity.py check DIR [--kv-dtype fp32|fp16]    # recomputes every case; prints the diffs
    python benchmarks/bitidentity.py check DIR --set-rate [--kv-dtype ...]  # models loaded at 0, then set_rate

``--set-rate`` loads every artifact at rate 0 and switches with ``set_rate`` (keeps below the stored ones, compact
output-projection copies where a keep drops whole chunks of a head), so a check against a recording of
loads at the rate tests the exact-truncation guarantee on every case too.

The models run a float32 KV cache unless ``--kv-dtype fp16`` (the runtime's default since the float16 cache; the
recordings below were made with float32 caches, so a check against them keeps fp32).

Cases: small random-weight models of the five architectures (Llama, Qwen2 with q/k/v biases, Mamba2, Nemotron-H,
Bamba; the Hugging Face builders the tests use), compressed by ``uniql.compress`` to an fp32 and an int4 artifact
(fixed calibration ids), each loaded and run at rates 0 / 0.15 / 0.25 / 0.35 with int4 activations fp32 (W4A32)
and int8 (W4A8): logits of a fixed 13-token prompt (prefill), then 3 single-sequence decode steps, then a batched
decode of 3 sequences (different prompts, 2 steps). Plus the SmolLM2-135M artifacts in ~/.cache/uniql/models/q19
(mix-fp32, mix-rot-mse-ao-int4) on a 9-token prompt, when present. The random models are rebuilt in a temporary
folder on every run (same seeds, so the same artifacts); ``check`` exits 1 when any case differs.

Recorded before the runtimes were unified (main at 69286f8) into a folder outside the repository; against it the unified
runtime gives: Llama, Qwen2, SmolLM2 (fp32, int4 W4A32 and W4A8) and Mamba2 fp32 bit-identical (their layers run
the same kernels in the same order as in the old transformer runtime); Nemotron-H and Bamba differ by ~1e-7 relative
wherever attention runs (the one attention kernel, SIMD dot / axpy helpers, replaced the hybrids' scalar one; under
partial RoPE a score is dot(rotary rows) + dot(pass rows)); hybrid int4 W4A32 differs by ~5e-7 (their linears now
run on the R16 kernels, which add a group's products in another order than the row-major GEMV), while hybrid
int4 W4A8 is bit-identical but for that attention difference (both layouts compute the same integer group sums).
tests/test_ssm.py holds the references these are checked against (transformers, the dequantized fp32 model).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]  # benchmarks/kernels.py would shadow a package torch imports
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import uniql  # noqa: E402
from uniql.models.batch import BatchDecoder  # noqa: E402

RATES = (0.0, 0.15, 0.25, 0.35)
KV = {"kv_dtype": "fp32"}  # main() sets it from --kv-dtype
SET_RATE = [False]  # main() sets it from --set-rate


def _load(art, rate: float, **kw):
    """uniql.load at `rate`, or (--set-rate) at 0 and then set_rate(rate)."""
    if not SET_RATE[0]:
        return uniql.load(art, rate=rate, **kw)
    m = uniql.load(art, rate=0.0, **kw)
    m.set_rate(rate)
    return m
ACTS = ("fp32", "int8")
NSAMP, SEQ = 4, 24
SMOL = Path.home() / ".cache/uniql/models/q19"


def _hf(arch: str):
    import torch  # noqa: F401
    if arch in ("llama", "qwen2"):
        from test_runtime import make_hf
        hf, _, _ = make_hf(arch, num_hidden_layers=3)
    else:
        from test_ssm import make_hf
        hf, _, _ = make_hf(arch)
    return hf


def _run(m, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, vocab, 13).astype(np.int32)
    out = {"prefill": m.logits(prompt)}
    steps = []
    for t in rng.integers(0, vocab, 3).astype(np.int32):
        steps.append(m.forward(np.array([t], np.int32))[0])
    out["decode"] = np.stack(steps)
    dec = BatchDecoder(m, max_batch=3, max_seq=64)
    seqs = [dec.new_sequence() for _ in range(3)]
    pre = [dec.prefill(s, rng.integers(0, vocab, 5 + 2 * i).astype(np.int32)) for i, s in enumerate(seqs)]
    out["batch_prefill"] = np.stack(pre)
    bs = [dec.step(seqs, rng.integers(0, vocab, 3).astype(np.int32)) for _ in range(2)]
    out["batch_decode"] = np.stack(bs)
    return out


def _cases():
    """Yields (name, thunk returning {part: logits})."""
    tmp = Path(tempfile.mkdtemp(prefix="bitid-"))
    for arch in ("llama", "qwen2", "mamba2", "nemotron_h", "bamba"):
        hf = _hf(arch)
        src = tmp / arch / "src"
        hf.save_pretrained(src)
        vocab = int(hf.config.vocab_size)
        calib = np.random.default_rng(0).integers(0, vocab, size=(NSAMP, SEQ))
        for q in ("fp32", "int4"):
            art = uniql.compress(src, tmp / arch / q, calibration=calib, num_samples=NSAMP, seq_len=SEQ,
                                 progress=False, quantize=(q == "int4"))
            acts = ACTS if q == "int4" else ("fp32",)
            for act in acts:
                for rate in RATES:
                    def thunk(art=art, act=act, rate=rate, vocab=vocab):
                        with uniql.int4_activations(act):
                            m = _load(art, rate, max_seq=64, **KV)
                            return _run(m, vocab)
                    yield f"{arch}-{q}-a{act}-r{int(rate * 100):02d}", thunk
    for name in ("mix-fp32", "mix-rot-mse-ao-int4"):
        d = SMOL / name
        if not d.is_dir():
            print(f"skip {name}: {d} missing")
            continue
        acts = ACTS if "int4" in name else ("fp32",)
        for act in acts:
            for rate in (0.0, 0.35):
                def thunk(d=d, act=act, rate=rate):
                    with uniql.int4_activations(act):
                        m = _load(d, rate, max_seq=64, **KV)
                        ids = np.array([1, 504, 3458, 28, 253, 1345, 30, 216, 3251], np.int32)
                        pre = m.logits(ids)
                        dec = m.forward(np.array([42], np.int32))
                        return {"prefill": pre[-2:], "decode": dec}
                yield f"smollm2-{name}-a{act}-r{int(rate * 100):02d}", thunk


def main(argv: list[str]) -> int:
    if "--set-rate" in argv:
        SET_RATE[0] = True
        argv = [a for a in argv if a != "--set-rate"]
    if len(argv) == 5 and argv[3] == "--kv-dtype" and argv[4] in ("fp16", "fp32"):
        KV["kv_dtype"] = argv[4]
        argv = argv[:3]
    if len(argv) != 3 or argv[1] not in ("record", "check"):
        print(__doc__)
        return 2
    mode, d = argv[1], Path(argv[2])
    d.mkdir(parents=True, exist_ok=True)
    bad = total = 0
    for name, thunk in _cases():
        got = thunk()
        total += 1
        f = d / f"{name}.npz"
        if mode == "record":
            np.savez(f, **got)
            continue
        if not f.exists():
            print(f"MISSING {name}")
            bad += 1
            continue
        ref = np.load(f)
        diffs = []
        for k, v in got.items():
            r = ref[k]
            if r.shape != v.shape:
                diffs.append(f"{k}: shape {v.shape} vs {r.shape}")
            elif not np.array_equal(r.view(np.uint32), v.view(np.uint32)):
                rel = float(np.abs(v.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-30))
                diffs.append(f"{k}: max rel diff {rel:.2e}")
        if diffs:
            bad += 1
            print(f"DIFF {name}: " + "; ".join(diffs))
    if mode == "check":
        print(f"{total - bad}/{total} cases bit-identical")
    else:
        print(f"recorded {total} cases in {d}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
