"""The steadiness guard's bookkeeping, driven by a scripted probe and a fake clock (no timing is asserted)."""

import numpy as np
import pytest

import shanshui.bench.steady as steady
from shanshui.bench.steady import CapacityProbe, Guard


class ScriptedProbe:
    """Probe readings from a list (the last one repeats)."""

    def __init__(self, readings):
        self.readings = list(readings)

    def sample(self, k: int = 5, pause_s: float = 0.0) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


class Clock:
    """perf_counter that only moves when a call says so."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(steady.time, "perf_counter", c)
    monkeypatch.setattr(steady.time, "sleep", lambda s: setattr(c, "t", c.t + s))
    return c


def guard(readings, **kw) -> Guard:
    # 8 readings at start set the baseline to 1.0 ms
    return Guard(2, probe=ScriptedProbe([1e-3] * 8 + list(readings)), **kw)


def counter(clock: Clock, seconds: float = 0.0):
    calls = []

    def call():
        clock.t += seconds
        calls.append(1)
        return len(calls)

    return call


def test_a_quiet_block_is_kept(clock):
    g = guard([1.1e-3])
    assert g.repeat(counter(clock), 3) == [1, 2, 3]
    assert g.rerun == 0 and g.kept_disturbed == 0 and g.probes == 2  # one block: a probe before, one after


def test_a_disturbed_block_is_measured_again(clock):
    g = guard([1e-3, 2e-3, 1e-3, 1e-3])  # block 1: quiet before, disturbed after (2 ms > 1.5 × 1 ms)
    assert g.repeat(counter(clock), 2) == [3, 4]
    assert g.rerun == 2 and g.kept_disturbed == 0


def test_waits_for_the_machine_to_settle_before_measuring(clock):
    g = guard([3e-3, 3e-3, 3e-3, 1e-3, 1e-3])  # disturbed three times, then quiet before the block and after it
    assert g.repeat(counter(clock), 1) == [1]
    assert g.rerun == 0 and not g.gave_up and g.probes == 5 and g.waited_s > 0


def test_budget_spent_keeps_and_counts_disturbed_blocks(clock):
    g = guard([1e-3, 5e-3] * 4 + [1e-3])  # quiet before every block, always disturbed after
    out = g.repeat(counter(clock), 2)  # budget max(2, n) = 2 re-run blocks of 2 calls, then one kept
    assert out == [5, 6] and g.rerun == 4 and g.kept_disturbed == 2


def test_a_machine_that_never_settles_stops_the_waiting(clock):
    g = guard([5e-3], settle_s=3.0)  # always disturbed
    out = g.repeat(counter(clock, 1.0), 3)  # 1 s calls: one per block
    assert out == [1, 2, 3] and g.gave_up and g.rerun == 0 and g.kept_disturbed == 3
    assert 3.0 <= g.waited_s < 5.0  # one bounded wait, not one per block
    rep = g.report()
    assert rep["gave_up"] and rep["kept_disturbed"] == 3 and rep["probe_baseline_ms"] == 1.0


def test_short_calls_repeat_for_the_minimum_time_in_blocks(clock):
    g = guard([1e-3])
    out = g.repeat(counter(clock, 0.125), 2, min_time_s=1.0, block_s=0.5)
    assert len(out) == 8  # 8 × 0.125 s = 1 s of samples, not just the 2 asked for
    assert g.probes == 4  # two blocks of 0.5 s, each between two probes


def test_long_calls_are_not_repeated_beyond_n_once_the_time_is_spent(clock):
    g = guard([1e-3])
    assert len(g.repeat(counter(clock, 10.0), 2, min_time_s=1.0)) == 2


def test_very_short_calls_stop_at_max_calls(clock):
    g = Guard(2, enabled=False)
    assert len(g.repeat(counter(clock, 1e-6), 3, min_time_s=10.0, max_calls=50)) == 50


def test_baseline_is_the_quieter_of_the_rows_and_the_benchs():
    quiet = [1.5e-3, 1.5e-3, 1.5e-3, 1.6e-3, 1.6e-3, 1.7e-3, 3e-3, 3e-3]  # p25 1.5 ms; two disturbed readings
    assert Guard(2, baseline_s=2e-3, probe=ScriptedProbe(quiet)).baseline_s == 1.5e-3
    assert Guard(2, baseline_s=1.2e-3, probe=ScriptedProbe(quiet)).baseline_s == 1.2e-3
    assert steady.baseline_of([1.0, 5.0, 1.2, 1.1, 0.2]) == 1.0  # one lucky reading does not set the line


def test_disabled_guard_only_calls():
    g = Guard(2, enabled=False)
    assert g.repeat(lambda: 7, 4) == [7, 7, 7, 7] and g.report()["enabled"] is False and g.probe is None


def test_real_probe_runs_one_thread_per_core_asked():
    p = CapacityProbe(3, n=1024, calls=2)
    assert len(p.bufs) == 3 and p.once() > 0 and p.sample(k=2, pause_s=0.0) > 0
    assert np.allclose(p.bufs[0][1], np.exp(p.bufs[0][0]))  # the loop really ran


def test_a_run_that_starts_disturbed_is_measured_against_the_remembered_quiet_line(tmp_path):
    book = tmp_path / "cache" / "probe-baselines.json"
    assert steady.remembered_baseline(book, "cpu|2", None) is None  # nothing measured, nothing remembered
    for quiet in (1.6e-3, 1.5e-3, 1.6e-3):
        steady.remembered_baseline(book, "cpu|2", quiet)
    assert steady.remembered_baseline(book, "cpu|2", 2.4e-3) == pytest.approx(1.55e-3)  # quartile of the quiet runs
    assert steady.remembered_baseline(book, "other machine", 2.4e-3) == 2.4e-3  # per machine
    assert steady.remembered_baseline(book, "cpu|2", 1.2e-3) == 1.2e-3  # a quieter run than ever counts at once
    for _ in range(steady.HISTORY):  # a machine that got slower for good moves the line after HISTORY runs
        steady.remembered_baseline(book, "cpu|2", 3e-3)
    assert steady.remembered_baseline(book, "cpu|2", 3e-3) == pytest.approx(3e-3)


def test_a_damaged_baseline_file_is_replaced(tmp_path):
    book = tmp_path / "probe-baselines.json"
    book.write_text("{not json", encoding="utf-8")
    assert steady.remembered_baseline(book, "cpu", 2e-3) == 2e-3
    assert steady.remembered_baseline(book, "cpu", 3e-3) == 2e-3
