"""The steadiness guard's bookkeeping, driven by a scripted probe (no timing is asserted)."""

import numpy as np

import shanshui.bench.steady as steady
from shanshui.bench.steady import CapacityProbe, Guard


class ScriptedProbe:
    """Probe readings from a list (the last one repeats); counts the readings taken."""

    def __init__(self, readings):
        self.readings, self.taken = list(readings), 0

    def sample(self, k: int = 3) -> float:
        self.taken += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def guard(readings, **kw) -> Guard:
    # 5 readings at start set the baseline to 1.0 ms
    return Guard(2, probe=ScriptedProbe([1e-3] * 5 + list(readings)), **kw)


def test_calls_between_quiet_probes_are_kept(monkeypatch):
    monkeypatch.setattr(steady.time, "sleep", lambda s: None)
    g = guard([1.1e-3])
    calls = []
    out = g.repeat(lambda: calls.append(1) or len(calls), 3)
    assert out == [1, 2, 3] and g.rerun == 0 and g.kept_disturbed == 0 and g.baseline_s == 1e-3


def test_a_disturbed_call_is_measured_again(monkeypatch):
    monkeypatch.setattr(steady.time, "sleep", lambda s: None)
    # call 1: quiet before, disturbed after (2 ms > 1.3 × 1 ms) → re-run; then quiet throughout
    g = guard([1e-3, 2e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    calls = []
    out = g.repeat(lambda: calls.append(1) or len(calls), 2)
    assert out == [2, 3] and g.rerun == 1 and g.kept_disturbed == 0


def test_waits_for_the_machine_to_settle_before_measuring(monkeypatch):
    monkeypatch.setattr(steady.time, "sleep", lambda s: None)
    g = guard([3e-3, 3e-3, 3e-3, 1e-3, 1e-3])  # disturbed three times, then quiet before the call and after it
    out = g.repeat(lambda: "ok", 1)
    assert out == ["ok"] and g.rerun == 0 and not g.gave_up and g.probes == 5


def test_budget_spent_keeps_and_counts_disturbed_calls(monkeypatch):
    monkeypatch.setattr(steady.time, "sleep", lambda s: None)
    # quiet before every call, always disturbed after: 2 re-runs (the budget), then 2 calls kept as disturbed
    readings = []
    for _ in range(4):
        readings += [1e-3, 5e-3]
    g = guard(readings + [1e-3])
    out = g.repeat(lambda: 0, 2)
    assert len(out) == 2 and g.rerun == 2 and g.kept_disturbed == 2


def test_a_machine_that_never_settles_stops_the_waiting(monkeypatch):
    clock = iter(np.arange(0, 1e4, 1.0))  # every perf_counter reading one second later
    monkeypatch.setattr(steady.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(steady.time, "sleep", lambda s: None)
    g = guard([5e-3], settle_s=3.0)  # always disturbed
    out = g.repeat(lambda: 0, 3)
    assert len(out) == 3 and g.gave_up and g.rerun == 0 and g.kept_disturbed == 3
    assert 3.0 <= g.waited_s < 10.0  # one bounded wait, not one per call
    rep = g.report()
    assert rep["gave_up"] and rep["kept_disturbed"] == 3 and rep["probe_baseline_ms"] == 1.0


def test_faster_probes_lower_the_baseline(monkeypatch):
    monkeypatch.setattr(steady.time, "sleep", lambda s: None)
    g = Guard(2, baseline_s=2e-3, probe=ScriptedProbe([1.5e-3] * 5 + [0.8e-3, 1e-3]))
    assert g.baseline_s == 1.5e-3  # the row's own first probes beat the parent's baseline
    g.repeat(lambda: 0, 1)
    assert g.baseline_s == 0.8e-3


def test_disabled_guard_only_calls():
    g = Guard(2, enabled=False)
    assert g.repeat(lambda: 7, 4) == [7, 7, 7, 7] and g.report()["enabled"] is False and g.probe is None


def test_real_probe_runs_one_thread_per_core_asked():
    p = CapacityProbe(3, n=1024, calls=2)
    assert len(p.bufs) == 3 and p.once() > 0 and p.sample(k=2) > 0
    assert np.allclose(p.bufs[0][1], np.exp(p.bufs[0][0]))  # the loop really ran
