"""The device chooses the rate: a controller that sets an elastic model's pruning rate between decoding steps from
what it measures on the machine.

Signals, sampled between steps (each a small class with ``read(now) -> dict``; one that cannot be read -- no
cgroup, no /proc field -- is skipped with one :class:`AdaptiveWarning`, never an error):

- :class:`MemorySignal`: available memory, the smallest of MemAvailable (/proc/meminfo), the cgroup v2 limit minus
  usage (memory.max - memory.current + inactive file pages) and the cgroup v1 one (memory.limit_in_bytes -
  memory.usage_in_bytes).
- :class:`CpuSignal`: CPU contention against the cores: threads of other processes ready to run (/proc/stat
  procs_running minus this process's running threads; the 1-minute load average when that field is missing) and
  steal time (share of the /proc/stat cpu line since the last sample).
- time per token: measured by the caller and passed to :meth:`AdaptiveController.step`.

Policies (each a small class with ``propose(ctx) -> Proposal | None``: the lowest rate it accepts, and why):

- :class:`MemoryPolicy`: the lowest rate whose weights fit ``available - reserve`` beside what the model already
  holds (bytes per rate from the model: weight_bytes scaled by parameter_count(rate)); a lower rate only when
  it fits with ``margin`` more to spare (hysteresis).
- :class:`LatencyPolicy`: keeps the time per token (median of the last ``tpot_window`` steps at the current rate)
  at or under ``tpot_ms`` (and holds the rate while that window fills); above the
  target it goes to the lowest rate predicted to meet it (time per token taken proportional to the weight bytes
  of a rate, memory-bound decoding), below ``(1 - band) * tpot_ms`` it allows the lowest rate predicted to stay
  under that (hysteresis band).
- :class:`CpuPolicy`: contention ``x`` (other runnable threads per core, plus steal) maps linearly onto the rate
  range between ``low`` and ``high``; the floor falls only when ``x + hysteresis`` would also allow it.

The controller takes the highest floor (the most pressed policy wins), clamps it to [min_rate, max_rate] and
rounds it up onto the rate grid (the artifact's 0..max_rate in steps of ``grid_step``). It changes the rate up
(shedding) at most every ``dwell_up_s`` seconds and down (growing back) only when no step has asked for a higher
rate for ``dwell_down_s`` seconds (and as long since the last change), by at most ``max_down_steps`` grid steps at
a time: no oscillation. Every decision (a change, or a change held back by dwell) is a record ``{"t", "step", "event",
"from", "to", "reason", "floors", "signals"}`` kept in :attr:`AdaptiveController.decisions`, logged on the
``uniql.serve.adaptive`` logger and written as one JSON line to ``log_path`` when given.

Use::

    from uniql.serve.adaptive import AdaptiveController, generate
    m = uniql.load(artifact, rate=0.0)
    text, trace = generate(m, "The capital of France is", max_new_tokens=64, tpot_ms=50)   # Python API
    # uniql generate ART "prompt" --adaptive --tpot-ms 50 [--min-rate R --max-rate R --adaptive-log F.jsonl]

Server hook (``uniql serve`` or any decoding loop): build one controller per model and call, between steps::

    ctl = AdaptiveController(model, tpot_ms=50, min_rate=0.0, max_rate=0.35)
    new_rate = ctl.step(time.monotonic(), measured_tpot_ms)      # -> float or None (keep the rate)
    if new_rate is not None:
        ctl.apply(model, new_rate, tokens=ids_of_the_sequence)   # resize (memory follows) or set_rate

``apply`` uses ``model.resize`` (the resident weights follow the rate, uniql.models.elastic_memory) when the model has it
and ``follow_memory`` is on, else ``model.set_rate``; ``follow_memory="lazy"`` resizes only when the memory policy
asks for the higher rate or the rate falls below what is resident (latency/CPU moves are then instant); a failed
switch (e.g. the artifact vanished while growing)
is logged and the model keeps running at its current rate. ``step`` does no I/O beyond reading /proc and /sys.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from uniql.errors import FormatError, InvalidArgumentError, RangeError, UniqlError, UniqlIOError

log = logging.getLogger(__name__)

__all__ = ["AdaptiveController", "AdaptiveWarning", "CpuPolicy", "CpuSignal", "LatencyPolicy", "MemoryPolicy",
           "MemorySignal", "Policy", "Proposal", "Signal", "SignalUnavailable", "generate", "rate_bytes"]


class AdaptiveWarning(UserWarning):
    """A signal (or part of one) cannot be read on this machine and is skipped."""


class SignalUnavailable(UniqlIOError):
    """Raised by a signal's ``read`` when nothing of it can be read here (the controller warns once, skips it)."""


class Signal(Protocol):
    name: str

    def read(self, now: float) -> dict[str, Any]:
        """Measurements (numbers) at time ``now``; raises SignalUnavailable (or OSError/ValueError) if unreadable."""
        ...


@dataclass(frozen=True)
class Proposal:
    rate: float       # the lowest rate this policy accepts now
    reason: str


@dataclass
class Context:
    """What a policy sees at one step."""

    now: float
    rate: float                                  # current rate
    grid: tuple[float, ...]                      # allowed rates, ascending (within min/max)
    signals: dict[str, dict[str, Any]]           # signal name -> its latest reading
    bytes_at: Callable[[float], float]           # resident weight bytes at a rate
    tpot_ms: float | None                        # smoothed time per token at the current rate (None: too few)


class Policy(Protocol):
    name: str

    def propose(self, ctx: Context) -> Proposal | None:
        ...


def _warn_once(seen: set, key: str, msg: str) -> None:
    if key not in seen:
        seen.add(key)
        warnings.warn(msg, AdaptiveWarning, stacklevel=3)
        log.warning(msg)


# ------------------------------------------------------------------------------- signals ----

def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.replace(":", " ").split()
            if len(parts) >= 2:
                try:
                    out[parts[0]] = int(parts[1])
                except ValueError:
                    pass
    return out


class MemorySignal:
    """Available memory in bytes: min over /proc/meminfo MemAvailable and the cgroup v2 / v1 limits; parts that do
    not exist are skipped with one warning each (an unlimited cgroup is not a warning)."""

    name = "memory"

    def __init__(self, meminfo: str | os.PathLike = "/proc/meminfo", cgroup_root: str | os.PathLike = "/sys/fs/cgroup"):
        self.meminfo, self.cg = Path(meminfo), Path(cgroup_root)
        self._warned: set = set()

    def _v2(self) -> int | None:
        mx = self.cg / "memory.max"
        if not mx.is_file():
            return None
        lim = mx.read_text().strip()
        if lim == "max":
            return None
        cur = int((self.cg / "memory.current").read_text().strip())
        inactive = 0
        stat = self.cg / "memory.stat"
        if stat.is_file():
            inactive = _read_kv(stat).get("inactive_file", 0)
        return int(lim) - cur + inactive

    def _v1(self) -> int | None:
        d = self.cg / "memory"
        lim_p, use_p = d / "memory.limit_in_bytes", d / "memory.usage_in_bytes"
        if not lim_p.is_file():
            return None
        lim = int(lim_p.read_text().strip())
        if lim >= 1 << 60:  # "unlimited" is a huge number in v1
            return None
        return lim - int(use_p.read_text().strip())

    def read(self, now: float) -> dict[str, Any]:
        vals: dict[str, int] = {}
        try:
            mi = _read_kv(self.meminfo)
            if "MemAvailable" not in mi:
                raise FormatError("no MemAvailable field")
            vals["meminfo"] = mi["MemAvailable"] * 1024
        except (OSError, ValueError) as e:
            _warn_once(self._warned, "meminfo", f"adaptive: {self.meminfo} MemAvailable cannot be read ({e}); skipped")
        for key, fn in (("cgroup_v2", self._v2), ("cgroup_v1", self._v1)):
            try:
                v = fn()
                if v is not None:
                    vals[key] = v
            except (OSError, ValueError) as e:
                _warn_once(self._warned, key, f"adaptive: {key} memory limit cannot be read ({e}); skipped")
        if not vals:
            raise SignalUnavailable("no memory source readable (MemAvailable, cgroup v2, cgroup v1)")
        src = min(vals, key=vals.get)
        return {"available_bytes": max(0, vals[src]), "source": src}


def _own_running_threads() -> int:
    n = 0
    try:
        for t in os.scandir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{t.name}/stat") as f:
                    s = f.read()
                if s[s.rindex(")") + 2] == "R":
                    n += 1
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0
    return n


class CpuSignal:
    """CPU contention: ``runnable_others`` (threads of other processes ready to run: /proc/stat procs_running minus
    this process's running threads, or the 1-minute load average when procs_running is missing), ``steal`` (share
    of CPU time stolen since the previous sample) and ``cores``. ``contention`` = runnable_others / cores + steal,
    smoothed over samples (``alpha``)."""

    name = "cpu"

    def __init__(self, stat: str | os.PathLike = "/proc/stat", loadavg: str | os.PathLike = "/proc/loadavg",
                 cores: int | None = None, own_running: Callable[[], int] | None = _own_running_threads,
                 alpha: float = 0.5):
        self.stat, self.loadavg = Path(stat), Path(loadavg)
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.cores = cores or ncpu or 1
        self.own_running = own_running
        self.alpha = alpha
        self._prev_cpu: list[int] | None = None
        self._ema: float | None = None
        self._warned: set = set()

    def read(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"cores": self.cores}
        others = None
        steal = 0.0
        try:
            lines = self.stat.read_text().splitlines()
            fields = {ln.split()[0]: ln.split()[1:] for ln in lines if ln.strip()}
            if "procs_running" in fields:
                own = self.own_running() if self.own_running else 0
                others = max(0, int(fields["procs_running"][0]) - own)
                out["procs_running"] = int(fields["procs_running"][0])
            else:
                _warn_once(self._warned, "procs_running", f"adaptive: {self.stat} has no procs_running; using the "
                           "load average")
            cpu = [int(v) for v in fields.get("cpu", [])]
            if len(cpu) >= 8:
                if self._prev_cpu is not None:
                    d = [a - b for a, b in zip(cpu, self._prev_cpu)]
                    tot = sum(d[:8])
                    steal = d[7] / tot if tot > 0 else 0.0
                self._prev_cpu = cpu
            else:
                _warn_once(self._warned, "steal", f"adaptive: {self.stat} has no steal column; steal skipped")
        except (OSError, ValueError, IndexError) as e:
            _warn_once(self._warned, "stat", f"adaptive: {self.stat} cannot be read ({e}); skipped")
        if others is None:
            try:
                load1 = float(self.loadavg.read_text().split()[0])
                out["load1"] = load1
                others = max(0.0, load1 - (self.own_running() if self.own_running else 0))
            except (OSError, ValueError, IndexError) as e:
                _warn_once(self._warned, "loadavg", f"adaptive: {self.loadavg} cannot be read ({e}); skipped")
        if others is None:
            raise SignalUnavailable("neither /proc/stat procs_running nor /proc/loadavg is readable")
        x = others / self.cores + steal
        self._ema = x if self._ema is None else self.alpha * x + (1 - self.alpha) * self._ema
        out.update(runnable_others=others, steal=round(steal, 4), contention=round(self._ema, 4))
        return out


# ------------------------------------------------------------------------------ policies ----

def _lowest(grid: Sequence[float], ok: Callable[[float], bool]) -> float | None:
    for r in grid:
        if ok(r):
            return r
    return None


class MemoryPolicy:
    """Keep ``reserve_bytes`` of memory free: the lowest rate r with bytes(r) - bytes(now) <= available - reserve;
    a rate below the current one needs ``margin_bytes`` (64 MiB) more to spare."""

    name = "memory"

    def __init__(self, reserve_bytes: float = 256 * 2**20, margin_bytes: float = 64 * 2**20):
        self.reserve, self.margin = float(reserve_bytes), float(margin_bytes)

    def propose(self, ctx: Context) -> Proposal | None:
        s = ctx.signals.get("memory")
        if not s:
            return None
        avail, held = float(s["available_bytes"]), ctx.bytes_at(ctx.rate)
        spare = avail - self.reserve

        def fits(r: float) -> bool:
            extra = ctx.bytes_at(r) - held
            return extra <= spare - (self.margin if r < ctx.rate else 0.0)

        r = _lowest(ctx.grid, fits)
        mb = 2**20
        if r is None:
            return Proposal(ctx.grid[-1], f"memory: {avail / mb:.0f} MB available, reserve {self.reserve / mb:.0f} MB: "
                                          f"even rate {ctx.grid[-1]} does not fit")
        return Proposal(r, f"memory: {avail / mb:.0f} MB available, reserve {self.reserve / mb:.0f} MB, rate {r} "
                           f"needs {ctx.bytes_at(r) / mb:.1f} MB (holding {held / mb:.1f} MB)")


class LatencyPolicy:
    """Time per token at or under ``tpot_ms``; a lower rate only when predicted under ``(1 - band) * tpot_ms``."""

    name = "latency"

    def __init__(self, tpot_ms: float, band: float = 0.2):
        if not (tpot_ms > 0 and math.isfinite(tpot_ms)):
            raise InvalidArgumentError(f"tpot_ms must be a positive number, got {tpot_ms!r}")
        if not 0.0 <= band < 1.0:
            raise InvalidArgumentError(f"band must be in [0, 1), got {band!r}")
        self.target, self.band = float(tpot_ms), float(band)

    def propose(self, ctx: Context) -> Proposal | None:
        if ctx.tpot_ms is None:
            return Proposal(ctx.rate, "latency: measuring the current rate")
        cur_b = ctx.bytes_at(ctx.rate)

        def pred(r: float) -> float:
            return ctx.tpot_ms * ctx.bytes_at(r) / cur_b

        t = ctx.tpot_ms
        if t > self.target:
            r = _lowest([g for g in ctx.grid if g >= ctx.rate], lambda g: pred(g) <= self.target)
            r = ctx.grid[-1] if r is None else r
            return Proposal(r, f"latency: {t:.1f} ms/token > target {self.target:g} ms, rate {r} predicted "
                               f"{pred(r):.1f} ms")
        lim = (1.0 - self.band) * self.target
        if t >= lim:
            return Proposal(ctx.rate, f"latency: {t:.1f} ms/token within [{lim:.1f}, {self.target:g}] ms: hold")
        r = _lowest(ctx.grid, lambda g: g >= ctx.rate or pred(g) <= lim)
        return Proposal(r if r is not None else ctx.rate,
                        f"latency: {t:.1f} ms/token < {lim:.1f} ms, rate {r} predicted {pred(r):.1f} ms")


class CpuPolicy:
    """Contention x (other runnable threads per core + steal) maps linearly onto [min, max] rate between ``low``
    and ``high``; the floor falls only when x + ``hysteresis`` allows it too."""

    name = "cpu"

    def __init__(self, low: float = 0.5, high: float = 1.5, hysteresis: float = 0.25):
        if not high > low >= 0:
            raise InvalidArgumentError(f"cpu thresholds need high > low >= 0, got low {low}, high {high}")
        self.low, self.high, self.hyst = float(low), float(high), float(hysteresis)
        self._floor: float | None = None

    def _map(self, x: float, grid: Sequence[float]) -> float:
        f = min(1.0, max(0.0, (x - self.low) / (self.high - self.low)))
        want = grid[0] + f * (grid[-1] - grid[0])
        return next((g for g in grid if g >= want - 1e-9), grid[-1])

    def propose(self, ctx: Context) -> Proposal | None:
        s = ctx.signals.get("cpu")
        if not s:
            return None
        x = float(s["contention"])
        up, down = self._map(x, ctx.grid), self._map(x + self.hyst, ctx.grid)
        if self._floor is None or up > self._floor:
            self._floor = up
        elif down < self._floor:
            self._floor = down
        return Proposal(self._floor, f"cpu: contention {x:.2f} (other runnable {s['runnable_others']} on "
                                     f"{s['cores']} cores, steal {s['steal']:.2%})")


# ---------------------------------------------------------------------------- controller ----

def rate_bytes(model: Any) -> Callable[[float], float]:
    """Resident weight bytes of an elastic model at any rate: its weight_bytes() now, scaled by
    parameter_count(rate) / parameter_count(now) (exact up to int4 block padding and norms; memory follows the
    rate with :meth:`ElasticModel.resize`)."""
    wb, p_now = float(model.weight_bytes()), float(model.parameter_count(model.rate))
    cache: dict[float, float] = {}

    def at(r: float) -> float:
        if r not in cache:
            cache[r] = wb * float(model.parameter_count(r)) / p_now
        return cache[r]
    return at


class AdaptiveController:
    """Chooses the rate between decoding steps (see the module docstring). ``model``: an elastic model (for its rate,
    max_rate and bytes per rate) or None with ``rate``/``max_rate``/``bytes_at`` given. ``signals``/``policies``:
    default memory + CPU signals, memory + CPU policies and, with ``tpot_ms``, the latency policy."""

    def __init__(self, model: Any = None, *, tpot_ms: float | None = None, min_rate: float = 0.0,
                 max_rate: float | None = None, grid_step: float = 0.05, rates: Sequence[float] | None = None,
                 signals: Iterable[Signal] | None = None, policies: Iterable[Policy] | None = None,
                 mem_reserve_bytes: float = 256 * 2**20, dwell_up_s: float = 0.5, dwell_down_s: float = 3.0,
                 max_down_steps: int = 2, tpot_window: int = 5,
                 sample_interval_s: float = 0.05, follow_memory: bool | str = True, rate: float | None = None,
                 bytes_at: Callable[[float], float] | None = None, log_path: str | os.PathLike | None = None,
                 log_holds: bool = False) -> None:
        art_max = float(model.meta.max_rate) if model is not None else (1.0 if max_rate is None else float(max_rate))
        hi = art_max if max_rate is None else float(max_rate)
        lo = float(min_rate)
        if not (0.0 <= lo <= hi <= art_max + 1e-12):
            raise RangeError(f"adaptive: need 0 <= min_rate {lo} <= max_rate {hi} <= the artifact's max rate {art_max}")
        if rates is None:
            if not grid_step > 0:
                raise InvalidArgumentError(f"grid_step must be > 0, got {grid_step}")
            n = int(math.floor(art_max / grid_step + 1e-9))
            rates = [round(i * grid_step, 10) for i in range(n + 1)] + [art_max]
        grid = sorted({round(float(r), 10) for r in rates if lo - 1e-12 <= r <= hi + 1e-12} | {lo, hi})
        self.grid: tuple[float, ...] = tuple(grid)
        self.min_rate, self.max_rate = lo, hi
        if follow_memory not in (True, False, "lazy"):
            raise InvalidArgumentError(f"follow_memory must be True, False or 'lazy', got {follow_memory!r}")
        self.follow_memory = follow_memory
        self._last_cause: str | None = None
        cur = float(model.rate) if model is not None else (lo if rate is None else float(rate))
        self.rate = self._snap(min(max(cur, lo), hi))
        self.bytes_at = bytes_at or (rate_bytes(model) if model is not None else (lambda r: 1.0 - r))
        self.signals: list[Signal] = list(signals) if signals is not None else [MemorySignal(), CpuSignal()]
        if policies is None:
            policies = [MemoryPolicy(mem_reserve_bytes), CpuPolicy()]
            if tpot_ms is not None:
                policies.append(LatencyPolicy(tpot_ms))
        elif tpot_ms is not None and not any(isinstance(p, LatencyPolicy) for p in policies):
            policies = [*policies, LatencyPolicy(tpot_ms)]
        self.policies: list[Policy] = list(policies)
        self.dwell_up_s, self.dwell_down_s = float(dwell_up_s), float(dwell_down_s)
        self.max_down_steps = int(max_down_steps)
        if tpot_window < 1:
            raise InvalidArgumentError(f"tpot_window must be >= 1, got {tpot_window}")
        self._tpots: deque[float] = deque(maxlen=int(tpot_window))
        self.sample_interval_s = float(sample_interval_s)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=10000)
        self.log_holds = log_holds
        self._log_f = open(log_path, "a") if log_path is not None else None
        self._last_change: float | None = None
        self._lower_since: float | None = None
        self._readings: dict[str, dict[str, Any]] = {}
        self._last_sample: float | None = None
        self._dead: set[str] = set()
        self._warned: set = set()
        self._step = 0

    # -------------------------------------------------------------------- helpers ----
    def _snap(self, r: float) -> float:
        return next((g for g in self.grid if g >= r - 1e-9), self.grid[-1])

    def _record(self, rec: dict[str, Any], level: int = logging.INFO) -> None:
        self.decisions.append(rec)
        line = json.dumps(rec, default=float)
        log.log(level, line)
        if self._log_f is not None:
            self._log_f.write(line + "\n")
            self._log_f.flush()

    def close(self) -> None:
        if self._log_f is not None:
            self._log_f.close()
            self._log_f = None

    def sample(self, now: float) -> dict[str, dict[str, Any]]:
        """Reads every live signal (an unreadable one is dropped after one warning)."""
        for s in self.signals:
            if s.name in self._dead:
                continue
            try:
                self._readings[s.name] = s.read(now)
            except (SignalUnavailable, OSError, ValueError) as e:
                self._dead.add(s.name)
                self._readings.pop(s.name, None)
                _warn_once(self._warned, s.name, f"adaptive: signal {s.name!r} cannot be read here ({e}); skipped")
        self._last_sample = now
        return self._readings

    @property
    def tpot_ms(self) -> float | None:
        """Median time per token of the last tpot_window steps at the current rate (None until the window is full
        after a change: the steps before it ran at another rate)."""
        if len(self._tpots) < (self._tpots.maxlen or 1):
            return None
        return float(np.median(self._tpots))

    # ----------------------------------------------------------------------- step ----
    def step(self, now: float | None = None, measured_tpot_ms: float | None = None) -> float | None:
        """One decision between decoding steps: ``now`` (seconds, monotonic; default time.monotonic()),
        ``measured_tpot_ms`` the last step's time per token (None: no latency input). Returns the new rate, or
        None to keep the current one. The caller applies it (:meth:`apply`, or ``model.set_rate``) and the
        controller assumes it was applied (call :meth:`applied` with the real rate if it was not)."""
        now = time.monotonic() if now is None else float(now)
        self._step += 1
        if measured_tpot_ms is not None and math.isfinite(measured_tpot_ms) and measured_tpot_ms >= 0:
            self._tpots.append(float(measured_tpot_ms))
        if self._last_sample is None or now - self._last_sample >= self.sample_interval_s:
            self.sample(now)
        ctx = Context(now, self.rate, self.grid, self._readings, self.bytes_at, self.tpot_ms)
        floors: dict[str, float] = {}
        reasons: dict[str, str] = {}
        for p in self.policies:
            prop = p.propose(ctx)
            if prop is not None:
                floors[p.name] = self._snap(min(max(prop.rate, self.min_rate), self.max_rate))
                reasons[p.name] = prop.reason
        target = max(floors.values(), default=self.min_rate)
        who = max(floors, key=lambda k: floors[k]) if floors else None
        since = None if self._last_change is None else now - self._last_change
        rec = {"t": round(now, 4), "step": self._step, "from": self.rate, "to": target, "floors": floors,
               "reason": reasons[who] if who is not None else "no pressure: min_rate",
               "signals": {k: dict(v) for k, v in self._readings.items()}, "tpot_ms": self.tpot_ms}
        if target > self.rate:
            self._lower_since = None
            if since is not None and since < self.dwell_up_s:
                if self.log_holds:
                    self._record({**rec, "event": "hold", "why": f"dwell: {since:.2f} s < {self.dwell_up_s} s"},
                                 logging.DEBUG)
                return None
            return self._change(rec, target, "up")
        if target < self.rate:
            if self._lower_since is None:
                self._lower_since = now
            waited = now - self._lower_since
            if waited < self.dwell_down_s or (since is not None and since < self.dwell_down_s):
                if self.log_holds:
                    self._record({**rec, "event": "hold", "why": f"dwell: lower target held {waited:.2f} s, "
                                  f"{self.dwell_down_s} s needed"}, logging.DEBUG)
                return None
            i = self.grid.index(self.rate) if self.rate in self.grid else len(self.grid) - 1
            target = max(target, self.grid[max(0, i - self.max_down_steps)])
            return self._change({**rec, "to": target}, target, "down")
        # at target: the timer of a lower target keeps running (a brief in-band reading does not restart it; a
        # move down still needs a step whose target is lower)
        if self.log_holds:
            self._record({**rec, "event": "hold", "why": "at target"}, logging.DEBUG)
        return None

    def _change(self, rec: dict[str, Any], target: float, direction: str) -> float:
        floors = rec.get("floors") or {}
        self._last_cause = max(floors, key=lambda k: floors[k]) if floors else None
        self._record({**rec, "event": "rate", "direction": direction})
        self.applied(target, rec["t"])
        return target

    def applied(self, rate: float, now: float | None = None) -> None:
        """Tells the controller the model now runs at ``rate`` (resets the latency average and the dwell clock)."""
        self.rate = float(rate)
        self._last_change = time.monotonic() if now is None else float(now)
        self._lower_since = None
        self._tpots.clear()

    def apply(self, model: Any, rate: float, tokens: Any = None) -> bool:
        """Switches ``model`` to ``rate``: ``model.resize(rate, tokens)`` when memory follows the rate, else
        ``model.set_rate(rate)``; with ``follow_memory="lazy"`` only a move up asked by the memory policy or a move
        below the resident rate resizes (other switches keep the weights and are instant). On a UniqlError (e.g.
        the artifact is gone while growing) the failure is logged,
        the controller goes back to the model's actual rate and False is returned; the model keeps running."""
        prev = self.rate
        try:
            resize = bool(self.follow_memory) and hasattr(model, "resize")
            if resize and self.follow_memory == "lazy":
                # weights follow only when memory asks (shedding for the memory policy) or must (below the
                # resident rate); other switches are set_rate, instant, keeping the weights resident
                resize = rate < model.loaded_rate - 1e-12 or (rate > model.rate and self._last_cause == "memory")
            if resize:
                model.resize(rate, tokens)
            else:
                model.set_rate(rate)
            return True
        except UniqlError as e:
            actual = float(model.rate)
            self._record({"t": round(time.monotonic(), 4), "step": self._step, "event": "apply_failed",
                          "from": prev, "to": rate, "rate_now": actual, "reason": f"{type(e).__name__}: {e}"},
                         logging.WARNING)
            self.applied(actual)  # back to the real rate; the dwell clock restarts (no immediate retry)
            return False


# ------------------------------------------------------------------------------ generate ----

def generate(model: Any, prompt: Any, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, *, controller: AdaptiveController | None = None, on_token: Callable | None = None,
             reprefill: bool = True, **controller_kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    """``model.generate`` with the rate chosen by an :class:`AdaptiveController` between tokens (built from
    ``controller_kw``, e.g. ``tpot_ms=50, min_rate=0, max_rate=0.35``, when not given). Returns (the continuation as
    ``model.generate`` returns it, a trace: one dict per generated token {"i", "t", "rate", "forward_ms",
    "switch_ms", "token_ms"}). ``reprefill``: after a switch that grew the head dims, recompute the KV cache from
    the sequence's ids (exact; else the new dims of past tokens are zero)."""
    from uniql.models.runtime import ids_array

    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InvalidArgumentError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgumentError(f"top_p must be in (0, 1], got {top_p}")
    if not hasattr(model, "set_rate"):
        raise InvalidArgumentError("adaptive generation needs an elastic model (a uniql artifact)")
    ctl = controller or AdaptiveController(model, **controller_kw)
    if isinstance(prompt, str):
        ids, is_text = model._encode(prompt, "prompt")
    else:
        ids, is_text = ids_array(prompt, "prompt"), False
    if ids.size > model.max_seq:
        raise RangeError(f"prompt has {ids.size} tokens, more than max_seq {model.max_seq}")
    if abs(model.rate - ctl.rate) > 1e-12:
        ctl.apply(model, ctl.rate)
    try:
        out = _generate_loop(model, ctl, ids, max_new_tokens, temperature, top_p, seed, on_token, reprefill)
    finally:
        if controller is None:
            ctl.close()
    if is_text:
        return model.tokenizer.decode(out[0]), out[1]
    return out


def _generate_loop(model: Any, ctl: AdaptiveController, ids: np.ndarray, max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, on_token: Callable | None,
                   reprefill: bool) -> tuple[list[int], list[dict[str, Any]]]:
    from uniql import _C

    rng = np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
    eos = set(model.config.eos_token_ids)
    seq = [int(v) for v in ids]
    out: list[int] = []
    trace: list[dict[str, Any]] = []
    model.reset()
    logits = model.forward(ids, last_only=True)
    t_prev = time.monotonic()
    for i in range(max_new_tokens):
        tok = _C.sample(logits[0], float(temperature), float(top_p), rng)
        out.append(tok)
        if tok in eos or model.position >= model.max_seq:
            break
        rate = model.rate
        t0 = time.monotonic()
        logits = model.forward(np.array([tok], np.int32), last_only=True)
        t1 = time.monotonic()
        seq.append(tok)
        fwd_ms = (t1 - t0) * 1e3
        new = ctl.step(t1, fwd_ms)
        if new is not None:
            ctl.apply(model, new, tokens=np.asarray(seq, np.int32) if reprefill else None)
        t2 = time.monotonic()
        rec = {"i": i, "t": t2, "rate": rate, "forward_ms": fwd_ms, "switch_ms": (t2 - t1) * 1e3,
               "token_ms": (t2 - t_prev) * 1e3}
        t_prev = t2
        trace.append(rec)
        if on_token is not None:
            on_token(rec)
    return out, trace
