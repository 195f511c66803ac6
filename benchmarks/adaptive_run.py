"""The device chooses the rate, measured: decoding SmolLM2 int4 while a CPU hog and a memory hog start and stop.

    python benchmarks/adaptive_run.py [--artifact ART] [--seconds 100] [--json out.json] [--png out.png]
    python benchmarks/adaptive_run.py --rss-only --artifact ART   # RSS at each rate: resize vs load

Runs on the same timeline: controller off (rate 0 throughout), on (uniql.serve.adaptive: memory and latency policies,
plus the CPU policy with ``--cpu-policy``; memory following every switch with ElasticModel.resize) and, with
``--lazy``, on with ``follow_memory="lazy"`` (weights released only when the memory policy asks):

    [0, 0.2 T) quiet | [0.2 T, 0.45 T) CPU hog | [0.45 T, 0.55 T) quiet | [0.55 T, 0.8 T) memory hog | rest quiet

The CPU hog is ``--hog-procs`` busy-looping processes (default: one per core); the memory hog allocates and touches
``--hog-mb`` MB. Both are started with subprocess and killed by their pid. Greedy decoding of 32-token sequences
back to back from a fixed prompt set (the hogs start and stop between tokens); per token: time, rate, time per token
(the wall time between tokens, switches included) and the process RSS. The latency target is ``--target-x`` (2)
times the quiet median time per token at rate 0 measured first; the memory reserve is MemAvailable at start minus
``--reserve-below-mb`` (1.5 GB: the hog crosses it, the other jobs of a shared machine moved it by up to ~1 GB in
our runs); with ``--cpu-policy`` its thresholds are the machine's background contention measured before the runs + 1
/ + 2 runnable threads per core (the hog adds one per core).

``--rss-only``: in fresh subprocesses, RSS above the process baseline after loading the artifact's weights at each
rate (no tokenizer), against one process that loads at 0 and resizes through the rates (up, down, up).

The machine is shared (2 cores, other jobs running): its background load is part of every number; runs are
sequential, so all see it (but not necessarily the same amount of it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = ("The capital of France is", "Once upon a time, in a small village,", "The theory of relativity says",
           "To bake bread you need", "The history of the Roman empire")

_RSS_CHILD = r"""
import gc, json, sys
from pathlib import Path
from uniql.formats.artifact import load_artifact
from uniql.models.elastic_memory import release_free_memory, rss_bytes
art, mode, rates = Path(sys.argv[1]), sys.argv[2], [float(r) for r in sys.argv[3].split(",")]
cfg = json.loads((art / "config.json").read_text())
def load(rate):  # weights only: the tokenizer (~47 MB for SmolLM2) is not part of the comparison
    return load_artifact(art, cfg, rate, max_seq=64)
w = load(max(rates)); w.logits([1, 2, 3]); del w   # one-time allocations (kernels, thread pools)
gc.collect(); release_free_memory()
base = rss_bytes()
out = []
if mode == "load":
    for r in rates:
        m = load(r); m.logits([1, 2, 3]); gc.collect(); release_free_memory()  # as resize does
        out.append({"rate": r, "rss": rss_bytes() - base, "weight_bytes": m.weight_bytes()})
        del m; gc.collect(); release_free_memory()
else:
    m = load(0.0)
    for r in rates:
        t = m.resize(r); m.logits([1, 2, 3])
        out.append({"rate": r, "rss": rss_bytes() - base, "weight_bytes": m.weight_bytes(),
                    "seconds": t["seconds"], "read_bytes": t["read_bytes"]})
print(json.dumps(out))
"""


def rss_table(art: Path, rates: list[float]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))

    def child(mode: str, rs: list[float]) -> list[dict]:
        r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(art), mode, ",".join(map(str, rs))],
                           capture_output=True, text=True, env=env, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    loaded = child("load", rates)
    path = sorted(rates, reverse=True) + sorted(rates)[1:] + sorted(rates, reverse=True)[1:]  # down, up, down
    resized = child("resize", path)
    ref = {d["rate"]: d for d in loaded}
    rows = []
    for d in resized:
        L = ref[d["rate"]]
        rows.append({**d, "rss_loaded": L["rss"], "ratio": d["rss"] / L["rss"],
                     "weights_equal": d["weight_bytes"] == L["weight_bytes"]})
    return {"loaded": loaded, "resized": rows}


def _mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _start_cpu_hog(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _start_mem_hog(mb: int) -> subprocess.Popen:
    code = ("import numpy as np, time\n"
            f"a = np.ones({mb} * 2**20, np.uint8)\n"  # np.ones writes every page: resident as it goes
            "time.sleep(3600)\n")
    return subprocess.Popen([sys.executable, "-c", code])  # not waited for: decoding goes on meanwhile


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _background_contention(seconds: float = 3.0) -> float:
    from uniql.serve.adaptive import CpuSignal

    s = CpuSignal(alpha=1.0)
    xs = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        xs.append(s.read(time.monotonic())["contention"])
        time.sleep(0.1)
    return float(np.median(xs))


def run_timeline(model, tok, seconds: float, ctl, cpu_hogs: int, hog_mb: int, label: str,
                 seq_tokens: int = 32) -> list[dict]:
    from uniql.serve.adaptive import generate
    from uniql.models.elastic_memory import rss_bytes

    phases = [(0.2, "quiet"), (0.45, "cpu hog"), (0.55, "quiet"), (0.8, "memory hog"), (9.0, "quiet")]
    t0 = time.monotonic()
    rows: list[dict] = []
    st = {"phase": None, "hogs": []}

    def set_phase() -> None:  # hogs start and stop between tokens, on the timeline
        el = (time.monotonic() - t0) / seconds
        want = next(name for end, name in phases if el < end)
        if want != st["phase"]:
            _stop(st["hogs"])
            st["hogs"] = []
            if want == "cpu hog":
                st["hogs"] = _start_cpu_hog(cpu_hogs)
            elif want == "memory hog":
                st["hogs"] = [_start_mem_hog(hog_mb)]
            st["phase"] = want
            print(f"[{label}] {time.monotonic() - t0:6.1f} s: {want}", flush=True)

    def on_token(rec: dict) -> None:
        rec["rss"] = rss_bytes()
        rec["mem_available"] = _mem_available()
        rec["phase"] = st["phase"]
        set_phase()

    k = 0
    try:
        set_phase()
        while time.monotonic() - t0 < seconds:
            ids = tok.encode(PROMPTS[k % len(PROMPTS)]).ids
            k += 1
            _, trace = generate(model, ids, max_new_tokens=seq_tokens, controller=ctl, on_token=on_token)
            for r in trace:
                r["t"] -= t0
            rows.extend(trace)
    finally:
        _stop(st["hogs"])
    return rows


def summarize(rows: list[dict], target: float) -> dict:
    ms = np.array([r["token_ms"] for r in rows])
    out = {"tokens": len(rows), "within_target": float(np.mean(ms <= target)), "median_ms": float(np.median(ms)),
           "p90_ms": float(np.percentile(ms, 90)),
           "switches": int(sum(1 for a, b in zip(rows, rows[1:]) if a["rate"] != b["rate"])),
           "switch_s": float(sum(r["switch_ms"] for r in rows) / 1e3)}
    for ph in ("quiet", "cpu hog", "memory hog"):
        sel = np.array([r["phase"] == ph for r in rows])
        if sel.any():
            out[ph] = {"tokens": int(sel.sum()), "within_target": float(np.mean(ms[sel] <= target)),
                       "median_ms": float(np.median(ms[sel])),
                       "mean_rate": float(np.mean([r["rate"] for r, s in zip(rows, sel) if s]))}
    return out


def plot(runs: dict, target: float, seconds: float, png: Path, reserve: float | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    for label, rows in runs.items():
        t = [r["t"] for r in rows]
        ax[0].step(t, [r["rate"] for r in rows], where="post", label=label)
        ax[1].plot(t, [r["token_ms"] for r in rows], ".", ms=2, label=label)
        ax[2].plot(t, [r["rss"] / 2**20 for r in rows], label=label)
        ax[3].plot(t, [r["mem_available"] / 2**30 for r in rows], label=label)
    if reserve is not None:
        ax[3].axhline(reserve / 2**30, color="k", ls="--", lw=1, label="reserve")
    ax[1].axhline(target, color="k", ls="--", lw=1, label=f"target {target:.1f} ms")
    ax[1].set_yscale("log")
    for a in ax:
        a.axvspan(0.2 * seconds, 0.45 * seconds, color="tab:red", alpha=0.1)
        a.axvspan(0.55 * seconds, 0.8 * seconds, color="tab:blue", alpha=0.1)
    ax[0].set_ylabel("rate")
    ax[1].set_ylabel("ms / token")
    ax[2].set_ylabel("RSS (MB)")
    ax[3].set_ylabel("MemAvailable (GiB)")
    ax[3].legend(fontsize=7)
    ax[3].set_xlabel("seconds (red: CPU hog, blue: memory hog)")
    ax[0].legend()
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, help="an int4 artifact (default: the demo's SmolLM2 int4)")
    ap.add_argument("--seconds", type=float, default=100.0, help="length of each run (100)")
    ap.add_argument("--hog-procs", type=int, default=os.cpu_count() or 2, help="CPU hog processes (one per core)")
    ap.add_argument("--hog-mb", type=int, default=5120, help="memory hog size in MB (5120)")
    ap.add_argument("--target-x", type=float, default=2.0, help="latency target / quiet rate-0 median (2)")
    ap.add_argument("--reserve-below-mb", type=int, default=1536,
                    help="memory reserve = MemAvailable at start - this (1536: crossed once the hog holds 1.5 GB)")
    ap.add_argument("--rss-only", action="store_true", help="only the RSS-per-rate table")
    ap.add_argument("--lazy", action="store_true", help="a third run with follow_memory='lazy'")
    ap.add_argument("--cpu-policy", action="store_true",
                    help="add the CPU-contention policy (off by default: on a machine shared with other jobs their "
                         "runnable threads swamp the hog's; the latency policy sees the hog through time per token)")
    ap.add_argument("--rates", default="0,0.1,0.2,0.35", help="rates of the RSS table")
    ap.add_argument("--json", type=Path, default=Path("adaptive_run.json"))
    ap.add_argument("--png", type=Path, default=Path("adaptive_run.png"))
    args = ap.parse_args()

    import uniql
    from uniql.serve.adaptive import AdaptiveController, CpuPolicy, CpuSignal, LatencyPolicy, MemoryPolicy, MemorySignal

    art = args.artifact
    if art is None:
        from uniql.demo import ensure_artifact, ensure_smollm2
        art = ensure_artifact(ensure_smollm2(), True, samples=32, seq_len=256, fresh=False)
    res: dict = {"artifact": str(art), "cores": os.cpu_count()}
    rates = [float(r) for r in args.rates.split(",")]
    res["rss"] = rss_table(art, rates)
    for d in res["rss"]["resized"]:
        print(f"rss rate {d['rate']:.2f}: resized {d['rss'] / 2**20:7.1f} MB, loaded {d['rss_loaded'] / 2**20:7.1f} MB "
              f"(x{d['ratio']:.3f}), weights equal {d['weights_equal']}, resize {d['seconds'] * 1e3:.0f} ms, "
              f"read {d['read_bytes'] / 2**20:.1f} MB")
    if not args.rss_only:
        import gc
        from uniql.models.elastic_memory import release_free_memory

        model = uniql.load(art, rate=0.0, max_seq=256)
        tok = model.tokenizer
        gc.collect()
        release_free_memory()  # what resize does after a switch: the off run must not carry load-time garbage
        # quiet baseline at rate 0 (after a warm-up sequence)
        from uniql.serve.adaptive import generate
        generate(model, tok.encode(PROMPTS[0]).ids, max_new_tokens=16, signals=[], policies=[])
        _, tr = generate(model, tok.encode(PROMPTS[1]).ids, max_new_tokens=48, signals=[], policies=[])
        base_ms = float(np.median([r["token_ms"] for r in tr]))
        target = args.target_x * base_ms
        bg = _background_contention()
        avail0 = _mem_available()
        reserve = avail0 - args.reserve_below_mb * 2**20
        res.update(base_ms=base_ms, target_ms=target, background_contention=bg, mem_available0=avail0,
                   mem_reserve=reserve)
        print(f"quiet rate-0 median {base_ms:.1f} ms/token, target {target:.1f} ms, background contention {bg:.2f}, "
              f"MemAvailable {avail0 / 2**30:.1f} GiB, reserve {reserve / 2**30:.2f} GiB", flush=True)
        runs = {}
        off = AdaptiveController(model, signals=[], policies=[])
        runs["controller off (rate 0)"] = run_timeline(model, tok, args.seconds, off, args.hog_procs, args.hog_mb,
                                                       "off")
        decisions = {}
        for label, follow in (("controller on", True), ("controller on, lazy memory", "lazy")):
            if follow == "lazy" and not args.lazy:
                continue
            model.resize(0.0)
            pols = [MemoryPolicy(reserve, margin_bytes=256 * 2**20), LatencyPolicy(target)]
            if args.cpu_policy:
                pols.append(CpuPolicy(low=bg + 1.0, high=bg + 2.0))
            ctl = AdaptiveController(model, signals=[MemorySignal(), CpuSignal()], policies=pols, dwell_up_s=0.5,
                                     dwell_down_s=3.0, follow_memory=follow)
            runs[label] = run_timeline(model, tok, args.seconds, ctl, args.hog_procs, args.hog_mb, label)
            decisions[label] = [d for d in ctl.decisions if d["event"] != "hold"]
        res["summary"] = {k: summarize(v, target) for k, v in runs.items()}
        res["decisions"] = decisions
        res["runs"] = runs
        for k, v in res["summary"].items():
            print(f"{k}: {v['tokens']} tokens, {v['switches']} switches ({v['switch_s']:.1f} s), "
                  f"{v['within_target']:.1%} within {target:.1f} ms, median "
                  f"{v['median_ms']:.1f} ms; " + "; ".join(
                      f"{ph}: {v[ph]['within_target']:.1%} within, median {v[ph]['median_ms']:.1f} ms, mean rate "
                      f"{v[ph]['mean_rate']:.2f}" for ph in ("quiet", "cpu hog", "memory hog") if ph in v))
        for label, ds in decisions.items():
            print(f"{label}: {len(ds)} rate decisions; first: " + "; ".join(
                f"{d['from']}->{d['to']} ({d['reason'][:50]})" for d in ds[:6]))
        plot(runs, target, args.seconds, args.png, reserve)
        print(f"plot: {args.png}")
    args.json.write_text(json.dumps(res, indent=1, default=float))
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
