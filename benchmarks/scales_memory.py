"""Resident bytes, logits and decode speed of an int4 artifact in the runtime: what keeping the int4 / int8 group
scales in float16 (uniql.h "scales in memory") changes. Run it once per build and compare the JSON outputs:

    python benchmarks/scales_memory.py --json after.json          # this checkout
    PYTHONPATH=/path/to/other/checkout python benchmarks/scales_memory.py --json before.json
    python benchmarks/scales_memory.py --compare before.json after.json

Per run: weight_bytes() at rate 0, the process RSS growth of loading (rate 0, after malloc_trim), a SHA-256 of the
logits of 128 Wikipedia tokens (W4A32 and W4A8, rate 0 and 15%; equal hashes = bit-identical outputs), decode tokens/s
(greedy steps after a 32-token prompt, best of --repeats, W4A8 = the default on AVX2 / AVX-512). The machine may be
shared: compare runs made back to back, and take the best of several. ``--micro N``: also the best of N timings of
one R16 int4 g64 4096 x 4096 linear (T = 1 and 64, W4A8 and W4A32, one thread).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

DEFAULT_ART = Path.home() / ".cache/uniql/models/smollm2-135m-instruct-uniql-int4"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(art: Path, repeats: int, steps: int) -> dict:
    import uniql
    from uniql.data import read_text
    from uniql.models.runtime import int4_activations

    from uniql.models.elastic_memory import release_free_memory

    release_free_memory()
    r0 = _rss()
    t0 = time.perf_counter()
    m = uniql.load(art)
    load_s = time.perf_counter() - t0
    release_free_memory()  # freed load-time temporaries back to the system: RSS = what the model holds
    out: dict = {"uniql": uniql.__file__, "load_s": load_s, "rss_load_bytes": _rss() - r0,
                 "weight_bytes": {"0.0": int(m.weight_bytes())}}
    enc = m.tokenizer.encode(read_text("wiki")[:4000])
    ids = np.asarray(getattr(enc, "ids", enc), np.int32)[:128]
    hashes = {}
    for rate in (0.0, 0.15):
        m.set_rate(rate)
        for act in ("fp32", "int8"):
            with int4_activations(act):
                hashes[f"{act}@{rate}"] = hashlib.sha256(np.ascontiguousarray(m.logits(ids)).tobytes()).hexdigest()
    out["logits_sha256"] = hashes
    m.set_rate(0.0)
    speed = {}
    for act in ("int8", "fp32"):
        with int4_activations(act):
            best = 0.0
            for _ in range(repeats):
                m.reset()
                m.forward(ids[:32], last_only=True)
                nxt = ids[32]
                t = time.perf_counter()
                for _ in range(steps):
                    nxt = int(np.argmax(m.forward([nxt], last_only=True)[0]))
                best = max(best, steps / (time.perf_counter() - t))
            speed[act] = best
    out["decode_tok_s"] = speed
    return out


def micro(repeats: int) -> dict:
    """Best time (C timer) of one R16 int4 g64 linear of 4096 x 4096 (Llama-3-8B's q_proj shape) at T = 1 and 64,
    W4A32 and W4A8, one thread: the kernels alone. Scales float16 where this build takes them, else float32."""
    from uniql import _C
    from uniql.compress.quant import quantize_rtn
    from uniql.models.runtime import int4_activations

    rows = cols = 4096
    rng = np.random.default_rng(0)
    q = quantize_rtn((rng.standard_normal((rows, cols)) * 0.02).astype(np.float32), 64)
    try:
        packed, scales = _C.q4_repack((q.packed, q.scales.astype(np.float16), 64, cols, None), 1, 1)
    except Exception:  # a build that keeps float32 scales
        packed, scales = _C.q4_repack((q.packed, q.scales, 64, cols, None), 1, 1)
    spec = (packed, scales, 64, cols, None, (rows, 1, 1))
    threads = _C.kernels_info()["threads"]
    _C.kernels_set_threads(1)
    out = {}
    try:
        for act in ("int8", "fp32"):
            with int4_activations(act):
                for T in (1, 64):
                    x = rng.standard_normal((T, cols)).astype(np.float32)
                    y = np.empty((T, rows), np.float32)
                    out[f"{act} T={T}"] = float(_C.bench_linear(spec, x, y, 1, rows, 1, cols, repeats))
    finally:
        _C.kernels_set_threads(threads)
    return out


def compare(before: dict, after: dict) -> str:
    wb, wa = before["weight_bytes"]["0.0"], after["weight_bytes"]["0.0"]
    lines = [f"weight_bytes rate 0: {wb / 1e6:.2f} -> {wa / 1e6:.2f} MB",
             f"RSS growth of loading: {before['rss_load_bytes'] / 1e6:.1f} -> {after['rss_load_bytes'] / 1e6:.1f} MB"]
    for k, h in before["logits_sha256"].items():
        lines.append(f"logits {k}: {'bit-identical' if after['logits_sha256'].get(k) == h else 'DIFFERENT'}")
    for k, v in before["decode_tok_s"].items():
        a = after["decode_tok_s"][k]
        lines.append(f"decode {k}: {v:.1f} -> {a:.1f} tok/s (x{a / v:.3f})")
    for k, v in before.get("micro_s", {}).items():
        if k in after.get("micro_s", {}):
            lines.append(f"R16 4096x4096 {k}: {v * 1e6:.0f} -> {after['micro_s'][k] * 1e6:.0f} us "
                         f"(speed x{v / after['micro_s'][k]:.3f})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=DEFAULT_ART)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--micro", type=int, default=0, help="also time one R16 linear, best of N (kernels alone)")
    ap.add_argument("--json")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args()
    if a.compare:
        print(compare(*(json.loads(Path(p).read_text()) for p in a.compare)))
        return
    res = measure(a.artifact, a.repeats, a.steps)
    if a.micro:
        res["micro_s"] = micro(a.micro)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
