"""Byte-identity recorder / checker of the compression pipeline's output, for refactors that must not change it.

    python benchmarks/artifact_hashes.py record FILE.json   # sha256 of every artifact file of every case below
    python benchmarks/artifact_hashes.py check FILE.json    # recomputes every case; prints which files differ

Cases: small random-weight models of the five architectures (Llama, Qwen2 with q/k/v biases, Mamba2, Nemotron-H,
Bamba; the Hugging Face builders the tests use) compressed by ``uniql.compress`` with fixed calibration ids to a
float32 and an int4 artifact, plus ``uniql.quantize_artifact`` of the float32 one; for Llama / Qwen2 also the
option variants that take other code paths (float16 storage, the magnitude scorer, split sigma, no rotation, an
untied rotated embedding, a precision policy with int8 / f16 / per-layer entries); for the hybrids the variants
that apply to them, and tied-embedding Nemotron-H and Bamba models (a rotated tied model's final mix). Every file
of every artifact is hashed except ``uniql_report.json`` (timings, peak memory). The outputs go to a fixed folder under /tmp (the
config records the source folder's name only, but a fixed path keeps every byte reproducible); ``check`` exits 1
when any file differs. Runtime logits are checked by benchmarks/bitidentity.py.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]  # benchmarks/kernels.py would shadow a package torch imports
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import uniql  # noqa: E402

WORK = Path("/tmp/uniql-artifact-hashes")
NSAMP, SEQ = 4, 24
ARCHS = ("llama", "qwen2", "mamba2", "nemotron_h", "bamba", "nemotron_h-tied", "bamba-tied")
#: extra compress options of the transformers (each a path of its own through the pipeline)
VARIANTS = {"f16": dict(quantize=False, dtype="float16"), "magnitude": dict(scorer="magnitude"),
            "split": dict(split_sigma=True, quantize=False), "norot": dict(rotate=False),
            "untie": dict(untie=True), "prec": dict(precision={"embedding": "int8", "lm_head": "f16",
                                                               "down_proj@-1": "int8-g32", "q_proj": "f16",
                                                               "mlp": "int4-g32"}),
            "g32": dict(group=32, mse_scale=False, act_order=False)}
#: those of the hybrids (the magnitude scorer and split sigma are transformer-only)
HYBRID_VARIANTS = {"f16": VARIANTS["f16"], "norot": VARIANTS["norot"], "g32": VARIANTS["g32"],
                   "prec": dict(precision={"embedding": "int8", "lm_head": "int4-g32", "mamba": "int8",
                                           "out_proj@0": "f16", "mlp": "int4-g32", "o_proj": "int8-g16"})}


def _hf(arch: str):
    if arch in ("llama", "qwen2"):
        from test_runtime import make_hf
        over = dict(num_hidden_layers=3)
        if arch == "llama":
            over["tie_word_embeddings"] = True  # the tied path (final mix); qwen2 stays untied
        hf, _, _ = make_hf(arch, **over)
    else:
        from test_ssm import make_hf
        base, _, tied = arch.partition("-")
        hf, _, _ = make_hf(base, **({"tie_word_embeddings": True} if tied else {}))
    return hf


def _hash_dir(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.is_file() and p.name != "uniql_report.json"}


def run() -> dict[str, dict[str, str]]:
    if WORK.exists():
        shutil.rmtree(WORK)
    out: dict[str, dict[str, str]] = {}
    for arch in ARCHS:
        hf = _hf(arch)
        src = WORK / arch / "src"
        hf.save_pretrained(src)
        vocab = int(hf.config.vocab_size)
        calib = np.random.default_rng(0).integers(0, vocab, size=(NSAMP, SEQ))
        kw = dict(calibration=calib, num_samples=NSAMP, seq_len=SEQ, progress=False)
        cases = {"fp32": dict(quantize=False), "int4": dict(quantize=True)}
        cases.update(VARIANTS if arch in ("llama", "qwen2") else HYBRID_VARIANTS)
        for name, extra in cases.items():
            art = uniql.compress(src, WORK / arch / name, **kw, **extra)
            out[f"{arch}/{name}"] = _hash_dir(art)
            print(f"{arch}/{name}", flush=True)
        q = uniql.quantize_artifact(WORK / arch / "fp32", WORK / arch / "requant", **kw)
        out[f"{arch}/requant"] = _hash_dir(q)
        print(f"{arch}/requant", flush=True)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("record", "check"):
        print(__doc__)
        return 2
    f = Path(argv[2])
    got = run()
    if argv[1] == "record":
        f.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(map(len, got.values()))} files of {len(got)} artifacts in {f}")
        return 0
    ref = json.loads(f.read_text())
    bad = 0
    for case in sorted(set(ref) | set(got)):
        r, g = ref.get(case, {}), got.get(case, {})
        diff = sorted(k for k in set(r) | set(g) if r.get(k) != g.get(k))
        if diff:
            bad += 1
            print(f"DIFF {case}: {', '.join(diff)}")
    n = sum(map(len, got.values()))
    print(f"{len(got) - bad}/{len(got)} artifacts byte-identical ({n} files)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
