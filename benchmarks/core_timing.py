"""Wall-clock times of uniql's numeric core at Llama-3-8B shapes (hidden 4096, MLP 14336).

    python benchmarks/core_timing.py            # full sizes (several minutes on 2 cores, ~8 GB of RAM)
    python benchmarks/core_timing.py --quick    # the same table at 1/8 of the sizes (seconds)

Threads are OpenBLAS's choice (OPENBLAS_NUM_THREADS); for a clean 2-core figure on a bigger host use
`OPENBLAS_NUM_THREADS=2 taskset -c 0,1 python benchmarks/core_timing.py`.

Every routine runs once through the public Python API (uniql.compress.linalg, uniql.compress.quant), so argument checks and
output allocation are included. OpenBLAS is told the core type (OPENBLAS_CORETYPE=SkylakeX, unless already
set): Debian's OpenBLAS 0.3.21 mis-detects Zen 5 as Haswell. GFLOP/s are given where the flop count is
well defined (syrk n^2 T, potrf n^3/3, potrf + trtri 2n^3/3, GPTQ ~ rows cols^2 + 2/3 cols^3).
"""
from __future__ import annotations

import argparse
import os
import time

try:  # SkylakeX kernels only where the CPU has AVX-512 (else SIGILL)
    if " avx512f" in open("/proc/cpuinfo").read():
        os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
except OSError:
    pass

import numpy as np  # noqa: E402  (after OPENBLAS_CORETYPE)

from uniql.compress import linalg as la  # noqa: E402
from uniql.compress import quant as q4  # noqa: E402


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def spd_from_tokens(rng, n: int, T: int) -> tuple[float, np.ndarray]:
    """(seconds of cov accumulation, G/T + 0.1 I): an SPD 'Hessian' from T random float32 tokens."""
    X = rng.standard_normal((T, n), dtype=np.float32)
    cov = la.Covariance(n)
    t, _ = timed(cov.update, X)
    H = cov.per_token()
    H[np.diag_indices(n)] += 0.1
    return t, H


def main(argv: list[str] | None = None) -> list[tuple[str, str, float, float | None]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/8 of the sizes")
    args = ap.parse_args(argv)
    d = 8 if args.quick else 1
    h, f, T, r = 4096 // d, 14336 // d, 2048 // d, 128 // d  # hidden, MLP, tokens, low rank
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, float, float | None]] = []

    def add(name, shape, sec, flops=None):
        rows.append((name, shape, sec, flops / sec / 1e9 if flops else None))
        print(f"  {name:<22} {shape:<14} {sec:9.3f} s", flush=True)

    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(auto)')}  sizes: hidden {h}, mlp {f}, tokens {T}")
    t, Hh = spd_from_tokens(rng, h, T)
    add("cov_accumulate f32", f"{T}x{h}", t, float(h) * h * T)
    t, Hf = spd_from_tokens(rng, f, T)
    add("cov_accumulate f32", f"{T}x{f}", t, float(f) * f * T)

    add("eigh", f"{h}", timed(la.eigh, Hh)[0])
    for H in (Hh, Hf):
        n = H.shape[0]
        add("cholesky", f"{n}", timed(la.cholesky, H)[0], n ** 3 / 3)
        add("spd_inv_diag", f"{n}", timed(la.spd_inv_diag, H, 1.0)[0], 2 * n ** 3 / 3)
    add("svd", f"{h}x{r}", timed(la.svd, rng.standard_normal((h, r)))[0])
    add("svd", f"{h}x{h}", timed(la.svd, Hh)[0])
    add("sqrtm (S and S^-1)", f"{h}", timed(la.sqrtm_pair, Hh)[0])

    for cols, H in ((h, Hh), (f, Hf)):
        W = (rng.standard_normal((h, cols), dtype=np.float32) * 0.02).astype(np.float32)
        add("q4 RTN g128", f"{h}x{cols}", timed(q4.quantize_rtn, W, 128 // min(d, 2))[0])
        add("q4 GPTQ g128", f"{h}x{cols}", timed(q4.quantize_gptq, W, H, 128 // min(d, 2))[0],
            float(h) * cols * cols + 2 * cols ** 3 / 3)
        del W

    print()
    print(f"| {'routine':<22} | {'shape':<14} | {'seconds':>9} | {'GFLOP/s':>8} |")
    print(f"|{'-' * 24}|{'-' * 16}|{'-' * 11}|{'-' * 10}|")
    for name, shape, sec, gf in rows:
        print(f"| {name:<22} | {shape:<14} | {sec:9.3f} | {'' if gf is None else f'{gf:8.1f}':>8} |")
    return rows


if __name__ == "__main__":
    main()
