"""The adaptive controller over time while the load on the machine changes (``python -m uniql.bench.adaptive_trace``;
``notebooks/adaptive.ipynb`` plots it).

One elastic artifact decodes greedy sequences back to back for ``seconds`` per run, through
:func:`uniql.serve.adaptive.generate` -- the same :class:`uniql.serve.adaptive.AdaptiveController` that ``uniql serve --adaptive``
runs in its engine thread after every batched decode step. Partway through each run (``hog`` = (start, stop) as
fractions of the run) a CPU hog starts: ``hog_procs`` busy-looping processes (default one per core), started with
subprocess and killed by their pid when the phase ends. Runs, on the same timeline:

* ``off``: the controller pinned at rate 0 (``max_rate=0``; its sampling overhead stays in the loop);
* ``lazy``: controller on, weights released only when the memory policy asks (rate switches are ``set_rate``);
* ``follow``: controller on, the resident weights follow every switch (``ElasticModel.resize``: RSS moves with the
  rate, each switch re-reads or frees weights).

Policies: memory (keep ``MemAvailable`` above a reserve) and latency (median time per token above the target:
the lowest rate predicted to meet it). The target is ``target_x`` times the quiet rate-0 median time per token
measured first (or ``tpot_ms``). The CPU policy (contention thresholds) is off by default: on a machine shared with
other jobs the background contention alone would pin it at the top rate; ``cpu_policy=True`` adds it with
thresholds at the background contention measured before the runs + 1 and + 2 runnable threads per core.

Per token: time since the run's start, the rate it was decoded at, the wall time since the previous token
(switches included), the forward and switch times, the process RSS, the phase; every ``sample_s`` the CPU
contention and MemAvailable as the controller's signals read them. The numerics run in the C runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from uniql.errors import InvalidArgumentError

__all__ = ["TraceConfig", "run", "summarize", "format_summary", "main"]

RUNS = ("off", "lazy", "follow")
PROMPTS = ("The capital of France is", "Once upon a time, in a small village,", "The theory of relativity says",
           "To bake bread you need", "The history of the Roman empire")


@dataclass(frozen=True)
class TraceConfig:
    artifact: str
    seconds: float = 60.0
    hog: tuple[float, float] = (0.3, 0.65)
    hog_procs: int = 0             # 0: one per core
    runs: tuple[str, ...] = RUNS
    tpot_ms: float | None = None   # None: target_x x the quiet rate-0 median
    target_x: float = 2.0
    calibrate_tokens: int = 64
    max_rate: float | None = None  # None: the artifact's
    seq_tokens: int = 32
    mem_reserve_mb: float = 256.0
    cpu_policy: bool = False
    sample_s: float = 0.25
    threads: int = 1

    def __post_init__(self) -> None:
        if not (Path(self.artifact) / "config.json").is_file():
            raise InvalidArgumentError(f"artifact {self.artifact!r} is not a model directory (no config.json)")
        if not self.seconds > 0:
            raise InvalidArgumentError(f"seconds must be > 0, got {self.seconds}")
        a, b = self.hog
        if not 0.0 <= a < b <= 1.0:
            raise InvalidArgumentError(f"hog must be (start, stop) with 0 <= start < stop <= 1, got {self.hog}")
        for r in self.runs:
            if r not in RUNS:
                raise InvalidArgumentError(f"run {r!r} is not one of {', '.join(RUNS)}")
        for name in ("hog_procs", "calibrate_tokens", "seq_tokens", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "hog_procs" else 1):
                raise InvalidArgumentError(f"{name} must be a positive int, got {v!r}")
        if self.tpot_ms is not None and not self.tpot_ms > 0:
            raise InvalidArgumentError(f"tpot_ms must be > 0, got {self.tpot_ms}")


def _start_hog(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _prompts(model: Any) -> list[np.ndarray]:
    if getattr(model, "tokenizer", None) is not None:
        ids = [np.asarray(model.tokenizer.encode(p).ids, np.int32) for p in PROMPTS]
        if all(i.size for i in ids):
            return ids
    rng = np.random.default_rng(0)
    return [rng.integers(3, model.config.vocab_size, 8).astype(np.int32) for _ in PROMPTS]


def _quiet_tpot_ms(model: Any, prompts: list[np.ndarray], tokens: int) -> float:
    from uniql.serve.adaptive import AdaptiveController, generate

    ctl = AdaptiveController(model, min_rate=0.0, max_rate=0.0)
    ms: list[float] = []
    k = 0
    while len(ms) < tokens:
        _, tr = generate(model, prompts[k % len(prompts)], max_new_tokens=min(32, tokens), controller=ctl)
        ms += [r["token_ms"] for r in tr]
        k += 1
    return float(np.median(ms))


def _background_contention(seconds: float = 2.0) -> float:
    from uniql.serve.adaptive import CpuSignal

    s = CpuSignal()
    xs = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        try:
            xs.append(s.read(time.monotonic())["contention"])
        except Exception:  # noqa: BLE001 - no /proc/stat: no CPU policy thresholds from it
            return 0.0
        time.sleep(0.1)
    return float(np.median(xs)) if xs else 0.0


def _controller(model: Any, name: str, cfg: TraceConfig, target: float, background: float) -> Any:
    from uniql.serve.adaptive import AdaptiveController, CpuPolicy, LatencyPolicy, MemoryPolicy

    reserve = cfg.mem_reserve_mb * 2**20
    if name == "off":
        return AdaptiveController(model, min_rate=0.0, max_rate=0.0, mem_reserve_bytes=reserve)
    pol: list[Any] = [MemoryPolicy(reserve), LatencyPolicy(target)]
    if cfg.cpu_policy:
        pol.append(CpuPolicy(low=background + 1.0, high=background + 2.0))
    return AdaptiveController(model, min_rate=0.0, max_rate=cfg.max_rate, policies=pol,
                              follow_memory="lazy" if name == "lazy" else True)


def run_one(name: str, cfg: TraceConfig, target: float, background: float, hog_n: int,
            progress: bool = True) -> dict[str, Any]:
    """One run: a fresh load at rate 0, back-to-back generations for ``cfg.seconds`` with the hog on the timeline."""
    import uniql
    from uniql.serve.adaptive import CpuSignal, MemorySignal, generate
    from uniql.models.elastic_memory import rss_bytes

    model = uniql.load(cfg.artifact, rate=0.0)
    prompts = _prompts(model)
    ctl = _controller(model, name, cfg, target, background)
    cpu, mem = CpuSignal(), MemorySignal()
    tokens: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    st: dict[str, Any] = {"phase": None, "hogs": [], "next_sample": 0.0}
    t0 = time.monotonic()
    a, b = cfg.hog

    def set_phase(now: float) -> None:
        el = (now - t0) / cfg.seconds
        want = "cpu hog" if a <= el < b else "quiet"
        if want != st["phase"]:
            _stop(st["hogs"])
            st["hogs"] = _start_hog(hog_n) if want == "cpu hog" else []
            st["phase"] = want
            if progress:
                print(f"[{name}] {now - t0:6.1f} s: {want}", flush=True)

    def on_token(rec: dict[str, Any]) -> None:
        now = time.monotonic()
        tokens.append({"t": rec["t"] - t0, "rate": rec["rate"], "token_ms": rec["token_ms"],
                       "forward_ms": rec["forward_ms"], "switch_ms": rec["switch_ms"], "rss": rss_bytes(),
                       "phase": st["phase"]})
        if now >= st["next_sample"]:
            s: dict[str, Any] = {"t": now - t0, "rate": float(model.rate), "phase": st["phase"]}
            for sig, keys in ((cpu, ("contention",)), (mem, ("available_bytes",))):
                try:
                    r = sig.read(now)
                    s.update({k: r.get(k) for k in keys})
                except Exception:  # noqa: BLE001 - a signal this machine lacks is left out
                    pass
            samples.append(s)
            st["next_sample"] = now + cfg.sample_s
        set_phase(now)

    k = 0
    try:
        set_phase(t0)
        while time.monotonic() - t0 < cfg.seconds:
            generate(model, prompts[k % len(prompts)], max_new_tokens=cfg.seq_tokens, controller=ctl,
                     on_token=on_token)
            k += 1
    finally:
        _stop(st["hogs"])
        ctl.close()
    decisions = [{k2: d.get(k2) for k2 in ("t", "event", "from", "to", "reason", "direction")}
                 for d in ctl.decisions if d.get("event") in ("rate", "apply_failed")]
    for d in decisions:
        d["t"] = float(d["t"]) - t0
    return {"tokens": tokens, "samples": samples, "decisions": decisions, "sequences": k}


def summarize(run_: dict[str, Any], target: float) -> dict[str, Any]:
    """Tokens, share within the target, median ms per token and mean rate: overall and per phase."""
    toks = run_["tokens"]
    ms = np.array([r["token_ms"] for r in toks])
    out: dict[str, Any] = {"tokens": len(toks), "within_target": float(np.mean(ms <= target)) if len(ms) else None,
                           "median_ms": float(np.median(ms)) if len(ms) else None,
                           "switches": sum(1 for d in run_["decisions"] if d["event"] == "rate"),
                           "switch_s": float(sum(r["switch_ms"] for r in toks) / 1e3),
                           "rss_mb": [float(min(r["rss"] for r in toks) / 2**20),
                                      float(max(r["rss"] for r in toks) / 2**20)] if toks else None}
    for ph in ("quiet", "cpu hog"):
        sel = [r for r in toks if r["phase"] == ph]
        if sel:
            m = np.array([r["token_ms"] for r in sel])
            out[ph] = {"tokens": len(sel), "within_target": float(np.mean(m <= target)),
                       "median_ms": float(np.median(m)), "mean_rate": float(np.mean([r["rate"] for r in sel]))}
    return out


def run(cfg: TraceConfig, progress: bool = True) -> dict[str, Any]:
    """Calibration (quiet rate-0 time per token, background contention), then every run of ``cfg.runs``."""
    import uniql
    from uniql import _C

    t_start = time.perf_counter()
    _C.kernels_set_threads(cfg.threads)
    hog_n = cfg.hog_procs or (os.cpu_count() or 1)
    model = uniql.load(cfg.artifact, rate=0.0)
    quiet = _quiet_tpot_ms(model, _prompts(model), cfg.calibrate_tokens)
    del model
    target = cfg.tpot_ms if cfg.tpot_ms is not None else cfg.target_x * quiet
    background = _background_contention()
    from uniql.bench import cpu_name

    rep: dict[str, Any] = {"config": {**asdict(cfg), "hog": list(cfg.hog), "runs": list(cfg.runs)},
                           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": cfg.threads,
                                       "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                       "background_contention": background},
                           "quiet_tpot_ms": quiet, "target_ms": target, "hog_procs": hog_n, "runs": {}}
    for name in cfg.runs:
        rep["runs"][name] = r = run_one(name, cfg, target, background, hog_n, progress)
        r["summary"] = summarize(r, target)
    rep["wall_s"] = time.perf_counter() - t_start
    return rep


def format_summary(rep: dict[str, Any]) -> str:
    t = rep["target_ms"]
    out = [f"| run | tokens | within {t:.3g} ms | median ms | quiet: within / median ms / mean rate | "
           "CPU hog: within / median ms / mean rate | switches (s spent) | RSS MB (min-max) |",
           "|---|---|---|---|---|---|---|---|"]
    for name, r in rep["runs"].items():
        s = r["summary"]

        def ph(p: str) -> str:
            x = s.get(p)
            return f"{x['within_target']:.0%} / {x['median_ms']:.3g} / {x['mean_rate']:.2f}" if x else "-"
        out.append(f"| {name} | {s['tokens']} | {s['within_target']:.0%} | {s['median_ms']:.3g} | {ph('quiet')} | "
                   f"{ph('cpu hog')} | {s['switches']} ({s['switch_s']:.1f}) | "
                   f"{s['rss_mb'][0]:.0f}-{s['rss_mb'][1]:.0f} |")
    return "\n".join(out)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uniql.bench.adaptive_trace", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--hog", default="0.3,0.65", help="start,stop of the CPU hog as fractions of a run")
    ap.add_argument("--hog-procs", type=int, default=0)
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--tpot-ms", type=float)
    ap.add_argument("--target-x", type=float, default=2.0)
    ap.add_argument("--cpu-policy", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(None if argv is None else list(argv))
    try:
        cfg = TraceConfig(a.artifact, a.seconds, tuple(float(x) for x in a.hog.split(",")), a.hog_procs,
                          tuple(x for x in a.runs.split(",") if x), a.tpot_ms, a.target_x, cpu_policy=a.cpu_policy)
    except (InvalidArgumentError, ValueError, TypeError) as e:
        ap.error(str(e))
    rep = run(cfg)
    print(format_summary(rep))
    if a.json:
        Path(a.json).write_text(json.dumps(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
