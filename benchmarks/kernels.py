"""Kernel microbenchmarks of the segmented linear on every kernel path the CPU has.

    python benchmarks/kernels.py                 # Llama-3.1-8B shapes, T = 1 and 512 (a few minutes on 2 cores)
    python benchmarks/kernels.py --quick         # 4096 x 4096 only, T = 1 and 64
    python benchmarks/kernels.py --threads 1 --json out.json

Per weight kind (fp32, fp16, int4 with fp32 activations, int4 with int8 activations) and path (ref, avx2,
avx512): best time of ``uq_linear_forward`` (C timer, best of --repeats), achieved weight GB/s for T = 1 (memory
bound: compare with the read bandwidth printed first) and G multiply-adds/s for T > 1 (compare with the fp32
FMA and int8 VNNI peaks printed first), against OpenBLAS sgemv/sgemm on the fp32 weight (dequantization time
reported separately: "dequantize then BLAS" pays it on every call of a quantized model). The scalar ``ref``
twins run only at T = 1 and at T = 64 on 4096 x 4096 (they are slow). The machine may be shared: the load
average is printed with every row; take the best of several runs.
"""
from __future__ import annotations

import argparse
import json
import os

try:  # SkylakeX kernels only where the CPU has AVX-512 (else SIGILL)
    if " avx512f" in open("/proc/cpuinfo").read():
        os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
except OSError:
    pass

from uniql import _C  # noqa: E402
from uniql import bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        _C.kernels_set_threads(a.threads)
    threads = _C.kernels_info()["threads"]
    if a.quick:
        bench.MICRO_SHAPES = ((4096, 4096),)
    cfg = bench.BenchConfig(prompt=64 if a.quick else 512, repeats=a.repeats, torch=False)
    mach = bench.machine_info(threads, a.repeats)
    print(f"cpu {mach['cpu']}  kernels {mach['kernels']}  threads {threads}  load {mach['load_before']}")
    print(f"read bandwidth {mach['read_gbps']:.1f} GB/s; peaks fp32 {mach['fp32_peak_gmacs']:.0f} / int8 "
          f"{mach['int8_peak_gmacs'] or 0:.0f} G MAC/s")
    notes: list[str] = []
    micro = bench.bench_micro(cfg, threads, notes)
    rep = {"config": {"prompt": cfg.prompt}, "machine": mach, "runs": [], "torch": {}, "micro": micro,
           "notes": notes, "wall_s": 0.0}
    text = bench.format_report(rep)
    i = text.find("\nkernel ")
    print(text[i + 1:] if i >= 0 else text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep, f, indent=1)


if __name__ == "__main__":
    main()
