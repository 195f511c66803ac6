"""The compact output-projection copies (``Model.set_options(compact=...)``) on the Llama-3.1-8B-shaped stack, in one
process: the cost of a rate change and the W4A8 decode time with the copies on / off, alternating.

    python benchmarks/compact_ab.py [--rate 0.35] [--rounds 8] [--layers 2] [--threads 1]

The stack of ``uniql.bench`` (``--layers`` layers of random int4 weights, 1024-token vocabulary, float16 KV cache);
rates set as ``uniql.bench.apply_rate`` does. Rate change: the best time of ``apply_rate`` per layer, switching
between rates 0 / 0.15 / 0.25 / 0.35 with the copies on and off. Decode: a 512-token prompt, then 16 decoded tokens,
per round with the copies on and off in alternating order; the logits of every run are compared bit for bit with the
first one (the copies read the same bytes: a difference is an error). Prints per-round ms per token and the ratio of
the medians (off / on; > 1: the copies are faster). The machine may be shared: ratios within one run only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # kernels.py here shadows a package
sys.path.insert(0, os.path.dirname(HERE))

from uniql import _C, bench  # noqa: E402
from uniql.models.runtime import Model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=0.35)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    _C.kernels_set_threads(a.threads)
    _C.kernels_set_q4_act("int8")
    src = bench.resolve_model("llama3.1-8b", a.layers, [])
    m = Model.from_hf_tensors(src.run_cfg, bench.random_tensors(src.run_cfg, "int4-a8"), qk_layout="rotate_half",
                              max_seq=540, max_chunk=512, kv_dtype="fp16")
    print(f"kernels {_C.kernels_info()['path']}, {a.threads} thread(s), {a.layers} layers, "
          f"load {os.getloadavg()[0]:.2f}")
    for compact in (True, False):
        m.set_options(compact=compact)
        best: dict[float, float] = {}
        for _ in range(3):
            for rate in (0.35, 0.0, 0.25, 0.35, 0.15, 0.0):
                t0 = time.perf_counter()
                bench.apply_rate(m, rate)
                best[rate] = min(best.get(rate, 1e9), time.perf_counter() - t0)
        print(f"rate change, copies {'on ' if compact else 'off'}: " +
              ", ".join(f"to {r:g} {1e3 * t / a.layers:.2f} ms" for r, t in best.items()) + " per layer")
    bench.apply_rate(m, a.rate)
    m.set_options(compact=True)
    print(f"rate {a.rate:g}: copies hold {m.compact_bytes() / 1e6:.1f} MB ({m.weight_bytes() / 1e6:.1f} MB of weights)")
    ids = np.random.default_rng(1).integers(0, src.run_cfg["vocab_size"], 540).astype(np.int32)

    def run(compact: bool) -> tuple[float, np.ndarray]:
        m.set_options(compact=compact)
        m.reset()
        m.forward(ids[:512], last_only=True)
        out = []
        t0 = time.perf_counter()
        for j in range(16):
            out.append(m.forward(ids[512 + j:513 + j], last_only=True).copy())
        return (time.perf_counter() - t0) / 16, np.stack(out)

    times: dict[bool, list[float]] = {True: [], False: []}
    ref = None
    for rnd in range(a.rounds):
        for compact in (True, False) if rnd % 2 == 0 else (False, True):
            t, lg = run(compact)
            if ref is None:
                ref = lg
            if not np.array_equal(lg.view(np.uint32), ref.view(np.uint32)):
                raise SystemExit(f"round {rnd}: logits with copies {'on' if compact else 'off'} differ")
            times[compact].append(t)
    fmt = lambda v: " ".join(f"{1e3 * x:.2f}" for x in v)  # noqa: E731
    print(f"decode ms/token, copies on:  {fmt(times[True])}\ndecode ms/token, copies off: {fmt(times[False])}")
    print(f"off / on (medians): {statistics.median(times[False]) / statistics.median(times[True]):.3f}; logits "
          "bit-identical in every round")


if __name__ == "__main__":
    main()
