import numpy as np, time, sys
from uniql import _C, bench
rng = np.random.default_rng(0)
rows, cols = 65536, 4096
specs = bench._micro_specs(rows, cols, rng)
x = rng.standard_normal((1, cols)).astype(np.float32); y = np.empty((1, rows), np.float32)
print("read", round(_C.bench_read_bw(1 << 30, 3, _C.kernels_info()["threads"]), 1))
for kind in ("fp32", "fp16", "int4", "int4-a8"):
    spec, nb = specs[kind]; bench._set_q4_act(kind)
    t = _C.bench_linear(spec, x, y, 1, rows, 1, cols, 10)
    print(kind, f"{nb/t/1e9:.1f} GB/s", f"({nb/1e6:.0f} MB)")
