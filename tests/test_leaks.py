"""No memory leaks over 1000 call cycles through the Python API, on success and on error paths, and inputs left
unchanged by every call.

Each workload runs in one fresh interpreter (``_run_cycles``; OMP/OpenBLAS at one thread, so the timings do not
depend on how busy the machine is): CYCLES_WARMUP cycles first (allocator pools, lazy imports, caches), then the
resident set size (``/proc/self/statm``) is read, CYCLES more cycles run, and the RSS is read again. Each cycle
allocates at least PAYLOAD_MIN_BYTES in the C core or in arrays it returns, so one buffer leaked per cycle would
grow the RSS by >= CYCLES * PAYLOAD_MIN_BYTES = 16 MiB, four times RSS_GROWTH_BOUND_BYTES. (Small leaks -- an error
message, a name -- are below what RSS can see; the C runner under ASan's leak checker and ``make valgrind`` cover
those.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

CYCLES = 1000
CYCLES_WARMUP = 100
PAYLOAD_MIN_BYTES = 16 * 1024
RSS_GROWTH_BOUND_BYTES = 4 * 1024 * 1024
TIMEOUT_S = 240

_SCRIPT = r'''
import gc, json, os, sys, tempfile
from pathlib import Path
import numpy as np
import uniql
from uniql.formats import safetensors as st
from uniql.compress.linalg import Covariance
from uniql.compress.quant import dequantize, quantize_gptq, quantize_rtn
from uniql.models.runtime import Model
from uniql.compress.sorting import sort_mlp
sys.path.insert(0, {tests!r})
from test_corrupt_inputs import run_compress, tiny_config, tiny_tensors, write_checkpoint

CYCLES, WARMUP = {cycles}, {warmup}
PAGE = os.sysconf("SC_PAGE_SIZE")
work = Path({work!r})
rng = np.random.default_rng(0)

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def expect(exc, fn):
    try:
        fn()
    except exc:
        return
    raise AssertionError(f"{{fn}} did not raise {{exc}}")

# ---- inputs (copies kept to check they are unchanged)
big = rng.standard_normal((128, 128)).astype(np.float32)             # 64 KiB
good = work / "good.safetensors"
st.save_file(good, {{"big": big, "ids": np.arange(2048, dtype=np.int64), "h": big.astype(np.float16)}},
             metadata={{"k": "v"}})
bad = work / "bad.safetensors"
blob = good.read_bytes()
bad.write_bytes(blob[: len(blob) - 5])                                 # truncated: data offsets past the end
out_st = Path("/dev/shm" if os.access("/dev/shm", os.W_OK) else work) / f"uq_leak_{{os.getpid()}}.safetensors"
W = rng.standard_normal((64, 256)).astype(np.float32)                  # 64 KiB
X = rng.standard_normal((256, 256))
H = X.T @ X / 256
Wn = W.copy(); Wn[3, 7] = np.nan
cfg = tiny_config()
tens = tiny_tensors()
bad_tens = dict(tens); bad_tens["model.layers.1.mlp.up_proj.weight"] = tens["model.layers.1.mlp.up_proj.weight"][:64].copy()
ids = np.arange(8)
src = write_checkpoint(work / "src")
art = run_compress(src, work / "art", quantize=True, group=32)
Xc = rng.standard_normal((64, 128)).astype(np.float32)
keep = {{"big": big.copy(), "W": W.copy(), "H": H.copy(), "Wn": Wn.copy(), "ids": ids.copy(), "Xc": Xc.copy(),
         "tens": {{k: v.copy() for k, v in tens.items()}}}}

def c_safe_open():
    with st.safe_open(good) as f:
        a = f.get("big", copy=True); f.get("h"); f.metadata()
    assert a.shape == (128, 128)
def c_load_file():
    d = st.load_file(good); assert d["big"].nbytes == 65536
def c_open_corrupt():
    expect(uniql.FormatError, lambda: st.load_file(bad))
def c_save_file():
    st.save_file(out_st, {{"big": big, "ids": ids}}, metadata={{"m": "x" * 100}})
def c_quantize_rtn():
    q = quantize_rtn(W, group=64); dequantize(q)
def c_quantize_gptq():
    quantize_gptq(W, H, group=64)
def c_quantize_nan():
    expect(uniql.NumericError, lambda: quantize_rtn(Wn, group=64))
def c_covariance_sort():
    c = Covariance(128); c.update(Xc); sort_mlp(c.mean())
def c_model():
    m = Model.from_hf_tensors(cfg, tens, max_seq=32); m.logits(ids)
def c_model_shape_error():
    expect(uniql.ShapeError, lambda: Model.from_hf_tensors(cfg, bad_tens, max_seq=32))
def c_load_artifact():
    m = uniql.load(art, rate=0.2); m.logits(ids); m.set_rate(0.35); m.logits(ids)

res = {{}}
for name, fn in list(globals().items()):
    if not name.startswith("c_"):
        continue
    for _ in range(WARMUP):
        fn()
    r0 = rss()
    for _ in range(CYCLES):
        fn()
    res[name[2:]] = rss() - r0
out_st.unlink(missing_ok=True)
changed = [k for k, v in keep.items() if k != "tens" and not np.array_equal(globals()[k], v, equal_nan=True)]
changed += [f"tens[{{k}}]" for k, v in keep["tens"].items() if not np.array_equal(tens[k], v)]
print("@@RESULT@@" + json.dumps({{"growth": res, "changed": changed}}))
'''

WORKLOADS = ["safe_open", "load_file", "open_corrupt", "save_file", "quantize_rtn", "quantize_gptq", "quantize_nan",
             "covariance_sort", "model", "model_shape_error", "load_artifact"]


@pytest.fixture(scope="module")
def cycles(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("leaks")
    code = textwrap.dedent(_SCRIPT).format(tests=os.path.dirname(__file__), cycles=CYCLES, warmup=CYCLES_WARMUP,
                                           work=str(work))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    assert p.returncode == 0, f"leak workload died (rc {p.returncode}):\n{p.stderr[-4000:]}"
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    return json.loads(line[len("@@RESULT@@"):])


@pytest.mark.parametrize("workload", WORKLOADS)
def test_rss_bounded_over_cycles(cycles, workload):
    growth = cycles["growth"][workload]
    assert growth <= RSS_GROWTH_BOUND_BYTES, (
        f"{workload}: RSS grew by {growth / 2**20:.1f} MiB over {CYCLES} cycles "
        f"({growth / CYCLES:.0f} bytes per cycle)")


def test_all_workloads_ran(cycles):
    assert sorted(cycles["growth"]) == sorted(WORKLOADS)


def test_inputs_unchanged(cycles):
    assert cycles["changed"] == [], f"inputs modified by the calls: {cycles['changed']}"
