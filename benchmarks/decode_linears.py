"""Per-linear W4A8 decode streaming of the Llama-3.1-8B layer shapes: which weights stream below the read bandwidth?

    python benchmarks/decode_linears.py [--layers 3] [--rounds 6] [--threads 1] [--rates 0,0.35]

``--layers`` layers of distinct random int4 weights (R16 layout, as the runtime holds them; 3 layers = ~330 MB, more
than any L3) run one decode token (T = 1, int8 activations) linear by linear in the model's order, each call timed by
the C timer (``_C.bench_linear``, one repetition: a weight is back in memory by its next call). Keeps as
``uniql.bench.apply_rate`` sets them (head dims a multiple of 16, MLP channels of 128); q_proj rows and o_proj
columns are pruned per head, gate / up rows and down columns as one prefix; k_proj / v_proj run at the stored head
dim (the runtime caches K / V at the loaded width). o_proj runs twice below the stored keep: on the stored weight
(a kept prefix of every head's 16 chunks, skipped chunks between) and on the runtime's compact copy of its kept
columns (``_C.q4_r16_prefix_in``). Printed per rate and linear: the 25th-percentile time over layers x rounds and
the kept weight bytes (codes + float16 scales) / time as a fraction of the read bandwidth measured first. The
machine may be shared: compare fractions within one run.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # kernels.py here shadows a package
sys.path.insert(0, os.path.dirname(HERE))

from uniql import _C  # noqa: E402
from uniql.bench import GROUP, _q4  # noqa: E402
from uniql.models.keep import keep_granularity, keep_size  # noqa: E402
from uniql.models.runtime import scales_f16  # noqa: E402

H, K, NH, NKV, D = 4096, 14336, 32, 8, 128
# name, rows, cols, nseg_out, nseg_in
SHAPES = (("q_proj", NH * D, H, NH, 1), ("k_proj", NKV * D, H, NKV, 1), ("v_proj", NKV * D, H, NKV, 1),
          ("o_proj", H, NH * D, 1, NH), ("gate_proj", K, H, 1, 1), ("up_proj", K, H, 1, 1), ("down_proj", H, K, 1, 1))


def r16_spec(rng: np.random.Generator, rows: int, cols: int, nso: int, nsi: int) -> tuple:
    q = _q4(rng.standard_normal((rows, cols), dtype=np.float32) * 0.02, GROUP)
    s16 = scales_f16("int4 scales", q.scales)
    packed, scales = _C.q4_repack((q.packed, s16, q.group, cols, None), nso, nsi)
    return (packed, scales, q.group, cols, None, (rows, nso, nsi))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rates", default="0,0.35", type=lambda s: [float(x) for x in s.split(",")])
    a = ap.parse_args()
    _C.kernels_set_threads(a.threads)
    _C.kernels_set_q4_act("int8")
    rng = np.random.default_rng(0)
    layers = [{n: r16_spec(rng, r, c, so, si) for n, r, c, so, si in SHAPES} for _ in range(a.layers)]
    bw = _C.bench_read_bw(1 << 30, 4, a.threads)
    print(f"kernels {_C.kernels_info()['path']}, {a.threads} thread(s), read bandwidth {bw:.1f} GB/s, "
          f"load {os.getloadavg()[0]:.2f}")
    for rate in a.rates:
        r = keep_size(D, 1.0 - rate, keep_granularity(D, 16, 2))
        k = keep_size(K, 1.0 - rate, keep_granularity(K, 128, 1))
        if r < D:  # the runtime's compact o_proj copies
            for lw in layers:
                spec = lw["o_proj"]
                p, s = _C.q4_r16_prefix_in(spec, r)
                lw["o_proj compact"] = (p, s, spec[2], NH * r, None, (H, 1, NH))
        calls = []
        for name, rows, cols, nso, nsi in SHAPES:
            ko = r if name == "q_proj" else k if name in ("gate_proj", "up_proj") else rows // nso
            ki = r if nsi > 1 else k if name == "down_proj" else cols
            calls.append((name, nso, ko, nsi, ki))
            if name == "o_proj" and r < D:
                calls.append(("o_proj compact", 1, H, NH, r))
        times: dict[str, list[float]] = {c[0]: [] for c in calls}
        for _ in range(a.rounds):
            for lw in layers:
                for name, nso, ko, nsi, ki in calls:
                    x = rng.standard_normal((1, nsi * ki), dtype=np.float32)
                    y = np.empty((1, nso * ko), np.float32)
                    times[name].append(_C.bench_linear(lw[name], x, y, nso, ko, nsi, ki, 1))
        print(f"rate {rate:g} (head dims {r} of {D}, MLP {k} of {K}):")
        tot_t = tot_b = 0.0
        for name, nso, ko, nsi, ki in calls:
            t = float(np.percentile(times[name], 25))
            b = nso * ko * nsi * ki * (0.5 + 2.0 / GROUP)
            if name != "o_proj" or r == D:
                tot_t, tot_b = tot_t + t, tot_b + b
            print(f"  {name:15s} {t * 1e6:8.0f} us  {b / 1e6:6.1f} MB  {b / t / 1e9 / bw:5.0%} of read bw")
        print(f"  {'layer':15s} {tot_t * 1e6:8.0f} us  {tot_b / 1e6:6.1f} MB  {tot_b / tot_t / 1e9 / bw:5.0%} of read bw"
              f"{' (compact o_proj)' if r < D else ''}")
        for lw in layers:
            lw.pop("o_proj compact", None)


if __name__ == "__main__":
    main()
