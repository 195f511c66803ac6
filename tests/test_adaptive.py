"""uniql.serve.adaptive: the rate controller on synthetic signals (fast, no model), the /proc and cgroup readers on fake
files, and adaptive generation on a tiny artifact."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from uniql.serve.adaptive import (AdaptiveController, AdaptiveWarning, CpuPolicy, CpuSignal, LatencyPolicy, MemoryPolicy,
                            MemorySignal, SignalUnavailable)
from uniql.errors import RangeError

MB = 2**20


class Fake:
    """A signal whose reading the test sets (None: unreadable)."""

    def __init__(self, name, **values):
        self.name, self.values = name, values

    def read(self, now):
        if self.values is None:
            raise SignalUnavailable("gone")
        return dict(self.values)


def bytes_at(r):  # a 1000 MB model at rate 0, 650 MB at 0.35
    return 1000 * MB * (1.0 - r)


class Mem:
    """Available memory as the machine would report it: ``budget`` (what would be free if the model held nothing)
    minus what the model holds at the controller's current rate (None: unreadable)."""

    name = "memory"

    def __init__(self, budget_mb):
        self.budget, self.ctl = budget_mb * MB, None

    def read(self, now):
        return {"available_bytes": self.budget - bytes_at(self.ctl.rate), "source": "fake"}


def make_mem(budget_mb, **kw):
    mem = Mem(budget_mb)
    ctl = make([mem], [MemoryPolicy(reserve_bytes=500 * MB, margin_bytes=kw.pop("margin", 100) * MB)], **kw)
    mem.ctl = ctl
    return mem, ctl


def make(signals, policies, **kw):
    kw.setdefault("dwell_up_s", 0.5)
    kw.setdefault("dwell_down_s", 3.0)
    kw.setdefault("sample_interval_s", 0.0)
    return AdaptiveController(None, max_rate=0.35, rate=0.0, bytes_at=bytes_at, signals=signals, policies=policies,
                              **kw)


def run(ctl, t0, t1, dt=0.1, tpot=None):
    """Steps from t0 to t1; returns [(t, rate)] after each step."""
    out, t = [], t0
    while t < t1 - 1e-9:
        ctl.step(t, tpot(ctl.rate) if callable(tpot) else tpot)
        out.append((round(t, 3), ctl.rate))
        t += dt
    return out


def changes(trace):
    return sum(1 for (_, a), (_, b) in zip(trace, trace[1:]) if a != b)


def test_memory_pressure_raises_rate_and_it_falls_back():
    mem, ctl = make_mem(5000)
    assert run(ctl, 0, 2)[-1][1] == 0.0
    mem.budget = 1300 * MB  # 800 MB may be held: rate 0.2
    tr = run(ctl, 2, 4)
    assert tr[0][1] == 0.2 and tr[-1][1] == 0.2
    mem.budget = 1100 * MB  # 600 MB: not even 0.35 fits: clamped to max_rate
    assert run(ctl, 4, 5)[-1][1] == 0.35
    mem.budget = 5000 * MB  # pressure ends: back to 0, by <= 2 grid steps, each after the down dwell
    tr = run(ctl, 5, 30)
    assert tr[-1][1] == 0.0
    rates = [r for _, r in tr]
    drops = [a - b for a, b in zip(rates, rates[1:]) if b < a]
    assert drops and max(drops) <= 0.1 + 1e-9
    down_times = [t for (t, a), (_, b) in zip(tr, tr[1:]) if b < a]
    assert all(b - a >= 3.0 - 1e-9 for a, b in zip([5.0] + down_times, down_times))
    recs = [d for d in ctl.decisions if d["event"] == "rate"]
    assert all(d["reason"].startswith("memory:") for d in recs)
    assert all(json.loads(json.dumps(d)) == d for d in recs)


def test_memory_hysteresis_no_oscillation():
    mem, ctl = make_mem(1400, dwell_down_s=0.2)  # 900 MB may be held: rate 0.1
    run(ctl, 0, 1)
    assert ctl.rate == 0.1
    # the budget wobbles by +-40 MB around the edge: the 100 MB margin keeps the rate where it is
    rng = np.random.default_rng(0)
    t, trace = 1.0, []
    for _ in range(300):
        mem.budget = (1400 + rng.uniform(-40, 40)) * MB
        ctl.step(t)
        trace.append((t, ctl.rate))
        t += 0.1
    assert changes(trace) <= 1


def test_latency_pressure_and_recovery():
    ctl = make([], [LatencyPolicy(50.0, band=0.2)], tpot_window=3)
    slow = [1.0]

    def tpot(rate):  # time per token proportional to the bytes of the rate, times a contention factor
        return 40.0 * slow[0] * bytes_at(rate) / bytes_at(0.0)

    assert run(ctl, 0, 3, tpot=tpot)[-1][1] == 0.0  # 40 ms < 50 ms: stays at 0 (and 40 > 0.8 * 50: no change)
    slow[0] = 1.5  # 60 ms at rate 0: the smallest rate predicted <= 50 ms is 0.2 (48 ms)
    tr = run(ctl, 3, 6, tpot=tpot)
    assert tr[-1][1] == 0.2
    assert tpot(0.2) <= 50.0
    assert changes(tr) == 1  # one jump, not a walk
    slow[0] = 1.0  # contention over: 32 ms at 0.2; predicted 40 at 0 is exactly 0.8 * 50 -> allowed back
    tr = run(ctl, 6, 20, tpot=tpot)
    assert tr[-1][1] == 0.0
    assert all(d["reason"].startswith("latency:") for d in ctl.decisions if d["event"] == "rate")


def test_latency_band_holds():
    ctl = make([], [LatencyPolicy(50.0, band=0.2)], dwell_down_s=0.1)
    ctl.applied(0.2, 0.0)
    # 45 ms at 0.2 -> predicted 56 ms at 0: inside the band below target, no change in either direction
    tr = run(ctl, 1, 20, tpot=lambda r: 45.0 * bytes_at(r) / bytes_at(0.2))
    assert changes(tr) == 0 and ctl.rate == 0.2


def test_cpu_pressure_raises_rate_with_hysteresis():
    cpu = Fake("cpu", contention=0.0, runnable_others=0, cores=2, steal=0.0)
    ctl = make([cpu], [CpuPolicy(low=0.5, high=1.5, hysteresis=0.25)], dwell_down_s=1.0)
    run(ctl, 0, 1)
    assert ctl.rate == 0.0
    cpu.values.update(contention=2.0, runnable_others=4)
    assert run(ctl, 1, 2)[-1][1] == 0.35
    cpu.values.update(contention=1.0, runnable_others=2)  # halfway: coming down, the floor of x + 0.25 (0.2625 -> 0.3)
    assert run(ctl, 2, 10)[-1][1] == 0.3
    # contention wobbling by less than the hysteresis around 1.0 does not move it
    rng = np.random.default_rng(1)
    t, tr = 10.0, []
    for _ in range(200):
        cpu.values["contention"] = 1.0 + rng.uniform(-0.1, 0.1)
        ctl.step(t)
        tr.append((t, ctl.rate))
        t += 0.1
    assert changes(tr) <= 1
    cpu.values.update(contention=0.0, runnable_others=0)
    assert run(ctl, 40, 60)[-1][1] == 0.0


def test_dwell_limits_up_moves():
    mem, ctl = make_mem(5000, dwell_up_s=1.0)
    ctl.step(0.0)
    mem.budget = 1400 * MB
    ctl.step(0.1)
    assert ctl.rate == 0.1
    mem.budget = 1300 * MB  # more pressure 0.1 s later: held until 1 s after the change
    t = 0.2
    while ctl.rate == 0.1:
        ctl.step(t)
        t += 0.1
    assert t - 0.1 >= 1.1 - 1e-9 and ctl.rate == 0.2


def test_bounds_hold():
    mem = Fake("memory", available_bytes=0)
    cpu = Fake("cpu", contention=5.0, runnable_others=10, cores=2, steal=0.0)
    ctl = AdaptiveController(None, max_rate=0.35, min_rate=0.1, rate=0.1, bytes_at=bytes_at, signals=[mem, cpu],
                             policies=[MemoryPolicy(100 * MB), CpuPolicy()], sample_interval_s=0, dwell_down_s=0.1)
    assert ctl.grid[0] == 0.1 and ctl.grid[-1] == 0.35
    ctl2 = AdaptiveController(None, rates=[0.0, 0.1, 0.2, 0.3, 0.35], max_rate=0.35, min_rate=0.1, rate=0.0,
                              bytes_at=bytes_at, signals=[mem, cpu], policies=[MemoryPolicy(100 * MB), CpuPolicy()],
                              sample_interval_s=0)
    assert ctl2.rate == 0.1  # clamped into [min, max]
    seen = [r for _, r in run(ctl, 0, 5)]
    assert min(seen) >= 0.1 and max(seen) <= 0.35 and seen[-1] == 0.35
    mem.values["available_bytes"] = 10**12
    cpu.values.update(contention=0.0, runnable_others=0)
    seen = [r for _, r in run(ctl, 5, 30)]
    assert min(seen) == 0.1  # never below min_rate
    with pytest.raises(RangeError):
        AdaptiveController(None, max_rate=0.2, min_rate=0.3, bytes_at=bytes_at, signals=[], policies=[])


def test_unreadable_signal_warns_once_and_is_skipped():
    gone = Fake("memory", available_bytes=1)
    gone.values = None
    cpu = Fake("cpu", contention=2.0, runnable_others=4, cores=2, steal=0.0)
    ctl = make([gone, cpu], [MemoryPolicy(), CpuPolicy()])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run(ctl, 0, 2)
    ours = [x for x in w if issubclass(x.category, AdaptiveWarning)]
    assert len(ours) == 1 and "memory" in str(ours[0].message)
    assert ctl.rate == 0.35  # the CPU signal still drives it


def test_proc_readers_on_fake_files(tmp_path):
    mi = tmp_path / "meminfo"
    mi.write_text("MemTotal: 1000 kB\nMemAvailable:    2048 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    s = MemorySignal(mi, cg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing cgroup is not a warning
        assert s.read(0) == {"available_bytes": 2048 * 1024, "source": "meminfo"}
    (cg / "memory.max").write_text("4096\n")
    (cg / "memory.current").write_text("3072\n")
    (cg / "memory.stat").write_text("anon 10\ninactive_file 512\n")
    assert s.read(0) == {"available_bytes": 1536, "source": "cgroup_v2"}
    (cg / "memory.max").write_text("max\n")
    assert s.read(0)["source"] == "meminfo"
    (cg / "memory.max").unlink()
    (cg / "memory").mkdir()
    (cg / "memory" / "memory.limit_in_bytes").write_text("1000000\n")
    (cg / "memory" / "memory.usage_in_bytes").write_text("400000\n")
    assert s.read(0) == {"available_bytes": 600000, "source": "cgroup_v1"}
    mi.write_text("MemTotal: 1000 kB\n")  # no MemAvailable field: one warning, the cgroup still answers
    with pytest.warns(AdaptiveWarning, match="MemAvailable"):
        assert s.read(0)["source"] == "cgroup_v1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.read(0)  # warned once only
    st = tmp_path / "stat"
    st.write_text("cpu  100 0 100 800 0 0 0 0 0 0\nprocs_running 5\n")
    c = CpuSignal(st, tmp_path / "loadavg", cores=2, own_running=lambda: 1, alpha=1.0)
    r = c.read(0)
    assert r["runnable_others"] == 4 and r["contention"] == 2.0
    st.write_text("cpu  150 0 150 1000 0 0 0 100 0 0\nprocs_running 1\n")  # 100 of 400 ticks stolen
    r = c.read(1)
    assert r["steal"] == 0.25 and r["contention"] == 0.25
    st.write_text("cpu  150 0 150 900 0 0 0 100 0 0\n")
    (tmp_path / "loadavg").write_text("3.00 2.00 1.00 1/100 42\n")
    with pytest.warns(AdaptiveWarning, match="procs_running"):
        assert c.read(2)["runnable_others"] == 2.0
    (tmp_path / "loadavg").unlink()
    with pytest.raises(SignalUnavailable), pytest.warns(AdaptiveWarning, match="loadavg"):
        c.read(3)


def test_log_path_jsonl(tmp_path):
    mem = Mem(600)
    ctl = make([mem], [MemoryPolicy(100 * MB)], log_path=tmp_path / "d.jsonl")
    mem.ctl = ctl
    run(ctl, 0, 1)
    ctl.close()
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert lines and lines[0]["event"] == "rate" and lines[0]["to"] == 0.35 and "memory" in lines[0]["signals"]


class _FakeModel:
    def __init__(self):
        self.rate = self.loaded_rate = 0.0
        self.calls = []

    def set_rate(self, r):
        if r < self.loaded_rate:
            raise RangeError("below the loaded rate")
        self.calls.append(("set_rate", r))
        self.rate = r

    def resize(self, r, tokens=None):
        self.calls.append(("resize", r))
        self.rate = self.loaded_rate = r


def test_lazy_memory_resizes_only_for_memory_or_below_resident():
    mem, ctl = make_mem(5000)
    lat = LatencyPolicy(50.0)
    ctl.policies.append(lat)
    ctl.follow_memory = "lazy"
    m = _FakeModel()
    t = 0.0

    def go(n, tpot):
        nonlocal t
        for _ in range(n):
            new = ctl.step(t, tpot(ctl.rate))
            if new is not None:
                ctl.apply(m, new)
            t += 0.1

    go(20, lambda r: 70.0 * bytes_at(r) / bytes_at(0))  # latency pressure: set_rate up, weights stay
    assert m.rate > 0 and m.calls and all(c[0] == "set_rate" for c in m.calls) and m.loaded_rate == 0.0
    m.calls.clear()
    go(250, lambda r: 10.0)  # back down above the resident rate: set_rate again
    assert m.rate == 0.0 and all(c[0] == "set_rate" for c in m.calls)
    m.calls.clear()
    mem.budget = 1100 * MB  # memory pressure: the weights are released (resize)
    go(20, lambda r: 10.0)
    assert ("resize", 0.35) in m.calls and m.loaded_rate == 0.35
    m.calls.clear()
    mem.budget = 5000 * MB  # below the resident rate: resize re-reads
    go(250, lambda r: 10.0)
    assert m.rate == 0.0 and m.calls and all(c[0] == "resize" for c in m.calls)
