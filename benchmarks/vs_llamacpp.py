"""Default int4 (W4A8 where the CPU has int8 dot products) decode and prefill against llama.cpp Q4_0, as ratios of
alternating runs on the same machine (for a shared machine: never compare absolute numbers across runs).

    python benchmarks/vs_llamacpp.py [--model smollm2|llama3.1-8b] [--rates 0,0.35] [--prompt 512] [--gen 32]
                                     [--rounds 3] [--repeats 2] [--threads 2] [--kv-dtype fp16|fp32]
                                     [--base DIR] [--base-kv-dtype fp16|fp32] [--llama-lib DIR [--native-too]]

Each round runs uniql and llama.cpp once each, in fresh child processes, in alternating order (ABAB: uniql first
in even rounds, llama.cpp first in odd ones); a child keeps the best of ``--repeats``. The models, timing and the
8B-stack scaling (2 layers with a 1024-token vocabulary, times scaled to 32 layers, plus the 128256-row lm_head
timed apart) are those of ``python -m uniql.bench`` (``uniql.bench.bench_model`` / ``bench_llama_cpp``); llama.cpp
has no pruning rate, so every rate is compared with its one (uncompressed Q4_0) run. Printed: per round and rate the
tok/s of both and their ratio, then the median ratio over rounds, the decode weight bandwidth of the layer linears as
a fraction of the read bandwidth measured at the start (``uniql.bench.machine_info``), and the load average at the
start of every child. One JSON line at the end holds everything. ``--base DIR`` also runs the uniql child from
another checkout (e.g. an older commit, built in place) in every round, right after this checkout's, so a change
is measured as before/after ratios against the same llama.cpp runs; ``--base . --base-kv-dtype fp32`` times this
checkout's float32 KV cache against its default float16 one (``--kv-dtype``; llama.cpp's cache is float16 too).

``--llama-lib DIR`` runs llama.cpp from another folder of its shared libraries (``libllama.so`` and the
``libggml*`` it links, e.g. an AVX2-only build of the same llama.cpp version for a fair comparison of our AVX2
kernels: the package's own build is compiled for the machine that built it, AVX-512 VNNI on a Zen 4/5): the
llama.cpp child gets ``LLAMA_CPP_LIB_PATH=DIR`` and reports the libraries it loaded and their
``llama_print_system_info`` line, both printed and kept in the JSON. ``--native-too`` also times the package's own
llama.cpp build in every round (ratios against it printed as "native").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# this folder's kernels.py would shadow the `kernels` package transformers imports
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if "--root" in sys.argv:  # a child of another checkout imports that checkout's uniql
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--root") + 1])
sys.path.insert(0, ROOT)


def child(engine: str, a: argparse.Namespace) -> dict:
    from uniql import bench

    # an older checkout (--base) has no KV-cache option: its cache is float32
    kv = {"kv_dtype": a.kv_dtype} if "kv_dtype" in getattr(bench.BenchConfig, "__dataclass_fields__", {}) else {}
    cfg = bench.BenchConfig(models=(a.model,), kinds=("int4-a8",), rates=tuple(a.rates), prompt=a.prompt, gen=a.gen,
                            repeats=a.repeats, threads=a.threads, torch=False, llama_cpp=True, micro=False, **kv)
    notes: list[str] = []
    load = os.getloadavg()[0]
    if engine == "llama":
        r = bench.bench_llama_cpp(cfg, a.threads, notes)
        m = (r or {}).get("models", {}).get(bench.canonical_model(a.model))
        if not m:
            raise SystemExit(f"llama.cpp did not run: {notes}")
        return {"load": load, "decode_tok_s": m["decode_tok_s"], "prefill_tok_s": m["prefill_tok_s"],
                "lib_dir": r.get("lib_dir"), "system_info": r.get("system_info")}
    from uniql import _C

    _C.kernels_set_threads(a.threads)
    res = bench.bench_model(bench.canonical_model(a.model), cfg, {}, notes)
    for r in res:
        r.extra["prompt_tokens"] = a.prompt
    rows = bench.summarize(res, {}, {}, None)
    return {"load": load, "path": _C.kernels_info()["path"],
            "rates": {f"{r['rate']:g}": {"decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"],
                                         "weight_gbps": r["weight_gbps"]} for r in rows}}


def spawn(engine: str, a: argparse.Namespace, root: str = ROOT, kv_dtype: str | None = None,
          llama_lib: str | None = None) -> dict:
    """One child run; a llama.cpp child loads its libraries from ``llama_lib`` (None: the package's own)."""
    from uniql.bench import llamacpp

    env = llamacpp.child_env(dict(os.environ), llama_lib) if engine == "llama" else dict(os.environ)
    t = str(a.threads)
    env.update(UNIQL_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, "--root", root, "--model", a.model,
           "--rates", ",".join(f"{r:g}" for r in a.rates), "--prompt", str(a.prompt), "--gen", str(a.gen),
           "--repeats", str(a.repeats), "--threads", t, "--kv-dtype", kv_dtype or a.kv_dtype]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        raise SystemExit(f"{engine} child failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rates", default="0,0.35", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-dtype", choices=("fp16", "fp32"), default="fp16", help="uniql's KV cache (fp16)")
    ap.add_argument("--base", help="another uniql checkout (built in place) to time in every round too")
    ap.add_argument("--base-kv-dtype", choices=("fp16", "fp32"), default=None,
                    help="the base child's KV cache (default: --kv-dtype)")
    ap.add_argument("--llama-lib", metavar="DIR", help="a folder of llama.cpp shared libraries (libllama.so, "
                    "libggml*) to run llama.cpp from, e.g. an AVX2-only build (default: llama-cpp-python's own)")
    ap.add_argument("--native-too", action="store_true", help="with --llama-lib: also time the package's own "
                    "llama.cpp build in every round")
    ap.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("uniql", "llama"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a)))
        return 0
    from uniql import _C, bench
    from uniql.bench import llamacpp

    if a.llama_lib:
        a.llama_lib = str(llamacpp.lib_dir(a.llama_lib))  # a clear error now, not in the first child
    elif a.native_too:
        ap.error("--native-too needs --llama-lib (without it llama.cpp is the native build already)")
    _C.kernels_set_threads(a.threads)
    mach = bench.machine_info(a.threads, 2)
    print(f"read bandwidth {mach['read_gbps']:.1f} GB/s ({a.threads} threads), int8 peak "
          f"{mach.get('int8_peak_gmacs') or 0:.0f} G MAC/s, kernels {mach['kernels']}, load {mach['load_before']:.2f}")
    rounds = []
    for i in range(a.rounds):
        order = ["uniql", "llama"] + (["native"] if a.native_too else [])
        got = {e: spawn("llama" if e == "native" else e, a, llama_lib=a.llama_lib if e == "llama" else None)
               for e in (order if i % 2 == 0 else order[::-1])}
        if i == 0:
            for e in ("llama", "native") if a.native_too else ("llama",):
                print(f"{e} llama.cpp: {got[e]['lib_dir']} ({got[e]['system_info']})", flush=True)
        if a.base:
            got["base"] = spawn("uniql", a, os.path.abspath(a.base), a.base_kv_dtype)
        u, lc = got["uniql"], got["llama"]
        rounds.append(got)
        for rate, ur in u["rates"].items():
            if a.base:
                br = got["base"]["rates"][rate]
                print(f"round {i} rate {rate}: base decode {br['decode_tok_s']:.1f} ({br['decode_tok_s'] / lc['decode_tok_s']:.2f}x"
                      f" llama.cpp), prefill {br['prefill_tok_s']:.0f} ({br['prefill_tok_s'] / lc['prefill_tok_s']:.2f}x), "
                      f"weights {br['weight_gbps'] / mach['read_gbps']:.0%} of read bw; load {got['base']['load']:.2f}")
            print(f"round {i} rate {rate}: decode {ur['decode_tok_s']:.1f} vs {lc['decode_tok_s']:.1f} tok/s "
                  f"({ur['decode_tok_s'] / lc['decode_tok_s']:.2f}x), prefill {ur['prefill_tok_s']:.0f} vs "
                  f"{lc['prefill_tok_s']:.0f} ({ur['prefill_tok_s'] / lc['prefill_tok_s']:.2f}x), weights "
                  f"{ur['weight_gbps'] / mach['read_gbps']:.0%} of read bw; load {u['load']:.2f} / {lc['load']:.2f}",
                  flush=True)
            if a.native_too:
                nat = got["native"]
                print(f"  native llama.cpp: decode {nat['decode_tok_s']:.1f} ({ur['decode_tok_s'] / nat['decode_tok_s']:.2f}x), "
                      f"prefill {nat['prefill_tok_s']:.0f} ({ur['prefill_tok_s'] / nat['prefill_tok_s']:.2f}x); "
                      f"load {nat['load']:.2f}", flush=True)
    summary = {}
    for rate in rounds[0]["uniql"]["rates"]:
        d = [g["uniql"]["rates"][rate]["decode_tok_s"] / g["llama"]["decode_tok_s"] for g in rounds]
        p = [g["uniql"]["rates"][rate]["prefill_tok_s"] / g["llama"]["prefill_tok_s"] for g in rounds]
        bw = [g["uniql"]["rates"][rate]["weight_gbps"] / mach["read_gbps"] for g in rounds]
        summary[rate] = {"decode_ratio": statistics.median(d), "prefill_ratio": statistics.median(p),
                         "bw_frac": statistics.median(bw)}
        if a.base:
            summary[rate]["base"] = {
                "decode_ratio": statistics.median(g["base"]["rates"][rate]["decode_tok_s"] / g["llama"]["decode_tok_s"]
                                                  for g in rounds),
                "prefill_ratio": statistics.median(g["base"]["rates"][rate]["prefill_tok_s"] /
                                                   g["llama"]["prefill_tok_s"] for g in rounds),
                "bw_frac": statistics.median(g["base"]["rates"][rate]["weight_gbps"] / mach["read_gbps"] for g in rounds)}
            b = summary[rate]["base"]
            print(f"  base: decode {b['decode_ratio']:.2f}x, prefill {b['prefill_ratio']:.2f}x; {b['bw_frac']:.0%} of read bw")
        if a.native_too:
            summary[rate]["native"] = {
                k: statistics.median(g["uniql"]["rates"][rate][f"{k}_tok_s"] / g["native"][f"{k}_tok_s"] for g in rounds)
                for k in ("decode", "prefill")}
            nv = summary[rate]["native"]
            print(f"  against the native llama.cpp build: decode {nv['decode']:.2f}x, prefill {nv['prefill']:.2f}x")
        print(f"median over {a.rounds} rounds, rate {rate}: decode {summary[rate]['decode_ratio']:.2f}x, prefill "
              f"{summary[rate]['prefill_ratio']:.2f}x llama.cpp Q4_0{' (--llama-lib)' if a.llama_lib else ''}; "
              f"{summary[rate]['bw_frac']:.0%} of read bw")
    print(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "child"}, "machine": mach, "rounds": rounds,
                      "summary": summary, "load_end": os.getloadavg()[0], "time": time.strftime("%H:%M:%S")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
