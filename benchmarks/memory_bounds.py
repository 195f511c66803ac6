"""Peak memory of uniql.compress and of loading an artifact, against a documented bound.

    python benchmarks/memory_bounds.py            # small model (SmolLM2 shapes, 4 and 8 layers) + Llama-8B-shaped
    python benchmarks/memory_bounds.py --skip-8b  # small model only (about a minute)

Every measurement runs in a fresh subprocess (random weights saved as safetensors beforehand; OMP/OpenBLAS at the
caller's settings). Reported per run: ``base`` = RSS after ``import uniql`` (numpy, the extension, OpenBLAS),
``peak`` = VmHWM of the process at the end, and ``peak - base``.

The bound for compress (what a layer-streaming compressor needs: only one layer's statistics and the calibration
activations are held, docs/design.md §2.1):

    peak - base <= E + 2 W + S + A + C
      E  embedding and lm_head, float32 (held throughout: the embedding feeds calibration, lm_head is compressed last)
      W  the largest decoder layer's weights in float32 (x2: the original and its sorted copy coexist)
      S  one layer's float64 statistics: second moments of the attention input (n^2), q (Hq^2), k (Hk^2), MLP input
         (n^2), down_proj input (DI^2) and attention output (Hq^2), each twice (the accumulator and its mean()), plus
         the largest GPTQ Hessian twice more (the permuted copy and its inverse Cholesky factor in C)
      A  calibration activations: X and Y (2 B T n float32) and one sequence's captures T (n + Hq + Hk + n + DI)
      C  256 MiB (allocator slack, OpenBLAS buffers, the Python objects of the pipeline)
    with n = hidden, DI = intermediate, Hq = heads x head_dim, Hk = kv heads x head_dim, B x T calibration tokens.

A compressor that holds the whole checkpoint instead adds (L - 1) W / 2 (every other layer, float32): the
small-model runs at 4 and 8 layers separate the two (a streaming compressor's peak does not grow with L).

Loading an artifact copies only the prefixes a rate keeps: ``load(rate)`` reports RSS after loading (minus base) and
the model's ``weight_bytes()`` at rate 0 and 0.35.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MiB = 1024 * 1024
CONST_BYTES = 256 * MiB

SMALL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
             head_dim=64, tie_word_embeddings=True)
LLAMA8B = dict(vocab_size=8192, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)   # vocab cut: see report()


def hf_config(shape: dict, layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
            **shape}


def write_model(d: Path, cfg: dict, seed: int = 0) -> int:
    """Random weights (std 0.02, norms 1) as float32 safetensors; returns the checkpoint's bytes."""
    from uniql.formats import gguf as convert
    from uniql.formats import safetensors as st

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in convert._expected_shapes(dict(cfg)).items():
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        else:
            t = rng.standard_normal(shape, dtype=np.float32)
            t *= 0.02
            tensors[name] = t
    st.save_file(d / "model.safetensors", tensors)
    (d / "config.json").write_text(json.dumps(cfg))
    return (d / "model.safetensors").stat().st_size


def bound_terms(cfg: dict, B: int, T: int) -> dict[str, int]:
    n, DI, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hq, hk = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    layer = 4 * (n * hq + 2 * n * hk + hq * n + 3 * n * DI + 2 * n)
    E = 4 * V * n * (1 if cfg["tie_word_embeddings"] else 2)
    S = 8 * 2 * (n * n + hq * hq + hk * hk + n * n + DI * DI + hq * hq) + 8 * 2 * max(n, DI, hq) ** 2
    A = 4 * (2 * B * T * n + T * (n + hq + hk + n + DI))
    return {"E": E, "2W": 2 * layer, "S": S, "A": A, "C": CONST_BYTES, "W": layer}


_CHILD = r"""
import json, os, resource, sys, time
import numpy as np
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import uniql
from uniql.compress.pipeline import compress
base = rss()
mode = sys.argv[1]
t = time.perf_counter()
if mode == "compress":
    B, T = int(sys.argv[4]), int(sys.argv[5])
    vocab = json.load(open(os.path.join(sys.argv[2], "config.json")))["vocab_size"]
    ids = np.random.default_rng(0).integers(0, vocab, size=(B, T))
    compress(sys.argv[2], sys.argv[3], calibration=ids, num_samples=B, seq_len=T, quantize=True, progress=False)
    out = {}
else:
    import gc
    m = uniql.load(sys.argv[2], rate=float(sys.argv[3]))
    gc.collect()
    out = {"weight_bytes": m.weight_bytes(), "after_load": rss() - base}
out.update(base=base, peak=hwm(), seconds=time.perf_counter() - t)
print("@@RESULT@@" + json.dumps(out))
"""


def child(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child {args} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    return json.loads(line[len("@@RESULT@@"):])


def mib(x: float) -> str:
    return f"{x / MiB:8.0f} MiB"


def run_compress(root: Path, name: str, shape: dict, layers: int, B: int, T: int) -> dict:
    cfg = hf_config(shape, layers)
    src = root / f"{name}-src"
    ckpt = write_model(src, cfg)
    r = child("compress", str(src), str(root / f"{name}-art"), str(B), str(T))
    terms = bound_terms(cfg, B, T)
    bound = sum(v for k, v in terms.items() if k != "W")
    r.update(name=name, layers=layers, tokens=B * T, checkpoint_bytes=ckpt, terms=terms, bound=bound,
             used=r["peak"] - r["base"])
    print(f"compress {name:10s} L={layers}  checkpoint {mib(ckpt)}  peak-base {mib(r['used'])}  bound {mib(bound)}"
          f"  ({'within' if r['used'] <= bound else 'OVER'})  [E {mib(terms['E'])}, 2W {mib(terms['2W'])}, "
          f"S {mib(terms['S'])}, A {mib(terms['A'])}]  {r['seconds']:.0f} s", flush=True)
    return r


def run_load(root: Path, name: str) -> list[dict]:
    out = []
    for rate in (0.0, 0.35):
        r = child("load", str(root / f"{name}-art"), str(rate))
        r.update(name=name, rate=rate)
        print(f"load     {name:10s} rate {rate:4.2f}  weights {mib(r['weight_bytes'])}  RSS after load - base "
              f"{mib(r['after_load'])}  peak - base {mib(r['peak'] - r['base'])}", flush=True)
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-8b", action="store_true", help="only the small model")
    ap.add_argument("--json", type=Path, help="write the numbers to this file")
    ap.add_argument("--workdir", type=Path, help="where to write the models (default: a temp dir, removed)")
    args = ap.parse_args()
    results: dict = {"compress": [], "load": []}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        for L in (4, 8):
            results["compress"].append(run_compress(root, f"small{L}", SMALL, L, B=8, T=128))
        results["load"] += run_load(root, "small8")
        if not args.skip_8b:
            avail = int([ln for ln in open("/proc/meminfo") if ln.startswith("MemAvailable")][0].split()[1]) * 1024
            if avail < 14 * 1024 * MiB:
                print(f"skipping the Llama-8B-shaped run: {avail / 2**30:.1f} GiB available, 14 needed")
            else:
                results["compress"].append(run_compress(root, "llama8b", LLAMA8B, 2, B=2, T=64))
                results["load"] += run_load(root, "llama8b")
    s4, s8 = results["compress"][0], results["compress"][1]
    per_layer = (s8["used"] - s4["used"]) / 4
    print(f"small model: peak grows by {per_layer / MiB:.0f} MiB per extra layer (float32 layer = "
          f"{s4['terms']['W'] / MiB:.0f} MiB): {'the checkpoint is held whole' if per_layer > 0.5 * s4['terms']['W'] else 'streaming'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
