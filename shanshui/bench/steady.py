"""Steady timings on a shared machine: a CPU capacity probe around every timed call, and re-runs of disturbed calls.

A VM shared with other tenants loses part of a core for a second or for minutes at a time. On the 2-vCPU machine this
was built on, an ONNX Runtime int8 U-Net step went from 34 ms to 60 ms in such spells, in whole rows as often as in
single calls, which made two runs of the same bench disagree. The probe sees the same spells: `threads` Python threads
each run a fixed NumPy loop (ufuncs release the GIL), so its wall time grows when any of those cores is taken.

The probe's undisturbed time (its baseline) is measured by the bench's probe process and lowered by any faster probe a
row sees. A timed call whose probe before or after it is slower than baseline × tolerance is measured again, after the
probe has settled back under that line (waiting up to `settle_s`); a budget bounds the re-runs, and what stays disturbed
is kept and counted, so a report says how clean its samples are. Spells shorter than a call and inside it go unseen.

Standalone on purpose: NumPy and the standard library only, so the Optimum worker can load this file from its venv.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import numpy as np

TOLERANCE = 1.3  # a probe this much slower than its baseline means the machine is disturbed
SETTLE_S = 30.0  # how long to wait for a disturbed machine to settle before measuring anyway
PAUSE_S = 0.01  # before each probe: lets the measured runtime's spinning pool threads go to sleep

T = TypeVar("T")


class CapacityProbe:
    """Wall time of `threads` threads each running the same fixed NumPy loop at once (about 1-2 ms undisturbed)."""

    def __init__(self, threads: int, n: int = 65536, calls: int = 40):
        self.threads, self.calls = max(1, int(threads)), calls
        self.bufs = [(np.linspace(0.0, 1.0, n, dtype=np.float32), np.empty(n, np.float32)) for _ in range(self.threads)]

    def _work(self, i: int, start: threading.Barrier) -> None:
        a, out = self.bufs[i]  # (n,) float32 each
        start.wait()
        for _ in range(self.calls):
            np.exp(a, out=out)

    def once(self) -> float:
        start = threading.Barrier(self.threads + 1)
        workers = [threading.Thread(target=self._work, args=(i, start), daemon=True) for i in range(self.threads)]
        for w in workers:
            w.start()
        start.wait()
        t = time.perf_counter()
        for w in workers:
            w.join()
        return time.perf_counter() - t

    def sample(self, k: int = 3) -> float:
        """Min of k probes after a short pause: one late thread start does not read as a disturbance."""
        time.sleep(PAUSE_S)
        return min(self.once() for _ in range(k))


def measure_baseline(threads: int, n: int = 30) -> float:
    """The probe's undisturbed time on this machine: the fastest of n samples."""
    probe = CapacityProbe(threads)
    return min(probe.sample() for _ in range(n))


class Guard:
    """Runs timed calls so that samples taken while the machine was disturbed are measured again."""

    def __init__(self, threads: int, baseline_s: float | None = None, tolerance: float = TOLERANCE,
                 settle_s: float = SETTLE_S, enabled: bool = True, probe: CapacityProbe | None = None):
        self.enabled, self.tolerance, self.settle_s = enabled, tolerance, settle_s
        self.probe = (probe or CapacityProbe(threads)) if enabled else None
        self.baseline_s = baseline_s
        self.rerun = 0  # samples thrown away and measured again
        self.kept_disturbed = 0  # samples kept although disturbed (the re-run budget was spent)
        self.waited_s = 0.0  # time spent waiting for the machine to settle
        self.probes = 0
        self.gave_up = False  # a settle ran out of time: no more waiting or re-runs
        if enabled:
            first = min(self.probe.sample() for _ in range(5))
            self.baseline_s = min(first, baseline_s) if baseline_s else first

    def _read(self) -> float:
        p = self.probe.sample()
        self.probes += 1
        self.baseline_s = min(self.baseline_s, p)
        return p

    def _disturbed(self, p: float) -> bool:
        return p > self.baseline_s * self.tolerance

    def settle(self) -> float:
        """Wait (up to settle_s) until the probe is back under the line; returns the last probe. After one wait that
        runs out, stop waiting for the rest of the row: the machine is busy for good, and samples are only counted."""
        p = self._read()
        if not self._disturbed(p) or self.gave_up:
            return p
        t0 = time.perf_counter()
        while self._disturbed(p) and time.perf_counter() - t0 < self.settle_s:
            time.sleep(0.25)
            p = self._read()
        self.waited_s += time.perf_counter() - t0
        self.gave_up = self._disturbed(p)
        return p

    def repeat(self, call: Callable[[], T], n: int, budget: int | None = None) -> list[T]:
        """n results of call() (which times itself), each taken between two undisturbed probes where the budget of
        re-runs (default n) allows."""
        if not self.enabled:
            return [call() for _ in range(n)]
        budget = n if budget is None else budget
        out: list[T] = []
        while len(out) < n:
            before = self.settle()
            res = call()
            after = self._read()
            if self._disturbed(before) or self._disturbed(after):
                if budget > 0 and not self.gave_up:
                    budget -= 1
                    self.rerun += 1
                    continue
                self.kept_disturbed += 1
            out.append(res)
        return out

    def report(self) -> dict:
        return {"enabled": self.enabled, "probe_baseline_ms": round(1e3 * self.baseline_s, 3) if self.baseline_s else None,
                "tolerance": self.tolerance, "rerun": self.rerun, "kept_disturbed": self.kept_disturbed,
                "waited_s": round(self.waited_s, 2), "gave_up": self.gave_up, "probes": self.probes}
