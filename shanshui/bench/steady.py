"""Steadier timings on a shared machine: calls repeated for a minimum time, and a CPU capacity probe around them.

Two kinds of noise were measured on the 2-vCPU VM this was built on (a U-Net call of the shipped int8 model, 34 ms
undisturbed):
- short spells: blocks of five consecutive calls read anywhere from 34 to 60 ms, a few hundred ms at a time. A row
  whose samples all fall in a fraction of a second reads fast or slow as a whole, which made two bench runs
  disagree. Against these, `repeat` keeps calling until `min_time_s` of samples is measured, so a median spans
  many spells;
- another process holding a core (a busy loop, a training run, another tenant): the probe reads about 1.5× slow
  then. `threads` Python threads each run a fixed NumPy loop (ufuncs release the GIL), so the probe's wall time grows
  when any of those cores is taken. Calls run in blocks between two probes; a block whose probe is over `tolerance`
  × the baseline (the first quartile of quiet samples, from the bench's probe process or the row's own start, the
  lower) is measured again once the probe settles (waiting at most `settle_s`, once per row), within a budget, and
  what stays disturbed is kept and counted, so a report says how clean its samples are.
Limits, measured: the probe does not predict the short spells (its readings barely correlate with them), nor a
spell of tens of seconds in which the int8 U-Net ran 1.75x slower while fp32 did not; and inside a process holding
ONNX Runtime sessions it read ~2x slow for long stretches with nothing else running, so its re-runs there are often
false alarms. That is why the bench runs it only with `--steady`; the minimum time is always on.

Standalone on purpose: NumPy and the standard library only, so the Optimum and stable-diffusion.cpp workers can load
this file from their venvs.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import numpy as np

TOLERANCE = 1.5  # a probe this much slower than its baseline means the machine is disturbed (a lost core: ~2×)
SETTLE_S = 30.0  # how long to wait for a disturbed machine to settle before measuring anyway
# Before each probe: ONNX Runtime's pool threads keep spinning after a Run() (measured: the probe reads ~2× slow
# 10-30 ms after a call, ~1.1× after 200 ms), which would read as a disturbance of our own making.
PAUSE_S = 0.2
BLOCK_S = 0.5  # calls shorter than this run in blocks of about this long between two probes
MAX_CALLS = 500  # most calls of one stage, however short

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

    def sample(self, k: int = 5, pause_s: float = PAUSE_S) -> float:
        """Median of k probes after a pause: one late thread start, or one lucky run, does not move it."""
        time.sleep(pause_s)
        return float(np.median([self.once() for _ in range(k)]))


def baseline_of(samples: list[float]) -> float:
    """The undisturbed probe time: the first quartile of samples (the quiet ones, not the luckiest one)."""
    return float(np.percentile(samples, 25))


def measure_baseline(threads: int, n: int = 30) -> float:
    """The probe's undisturbed time on this machine, measured before any runtime is loaded."""
    probe = CapacityProbe(threads)
    return baseline_of([probe.sample(pause_s=0.0) for _ in range(n)])


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
        if enabled:  # the row's own baseline (before its model loads) or the bench's, whichever is quieter
            own = baseline_of([self.probe.sample(pause_s=0.0) for _ in range(8)])
            self.baseline_s = min(own, baseline_s) if baseline_s else own

    def _read(self) -> float:
        self.probes += 1
        return self.probe.sample()

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

    def repeat(self, call: Callable[[], T], n: int, min_time_s: float = 0.0, budget: int | None = None,
               block_s: float = BLOCK_S, max_calls: int = MAX_CALLS) -> list[T]:
        """At least n results of call() (which times itself), and more until min_time_s of calls is measured (at most
        max_calls): short spells of noise then hit a few samples of a row, not all of them. Calls run in blocks of
        about block_s between two probes; a disturbed block is measured again where the budget of re-run blocks
        (default max(n, 2)) allows, else kept and counted."""
        budget = max(n, 2) if budget is None else budget
        out: list[T] = []
        spent = 0.0
        while len(out) < n or (spent < min_time_s and len(out) < max_calls):
            before = self.settle() if self.enabled else None
            block: list[T] = []
            t0 = time.perf_counter()
            while True:
                block.append(call())
                elapsed = time.perf_counter() - t0
                done = len(out) + len(block) >= n and (spent + elapsed >= min_time_s or len(out) + len(block) >= max_calls)
                if done or elapsed >= block_s:
                    break
            if self.enabled:
                after = self._read()
                if self._disturbed(before) or self._disturbed(after):
                    if budget > 0 and not self.gave_up:
                        budget -= 1
                        self.rerun += len(block)
                        continue
                    self.kept_disturbed += len(block)
            out.extend(block)
            spent += elapsed
        return out

    def report(self) -> dict:
        return {"enabled": self.enabled, "probe_baseline_ms": round(1e3 * self.baseline_s, 3) if self.baseline_s else None,
                "tolerance": self.tolerance, "rerun": self.rerun, "kept_disturbed": self.kept_disturbed,
                "waited_s": round(self.waited_s, 2), "gave_up": self.gave_up, "probes": self.probes}


HISTORY = 10  # baselines remembered per machine


def remembered_baseline(path, key: str, measured_s: float | None) -> float | None:
    """The baseline to use: the lower of this run's and the first quartile of this machine's last HISTORY runs (kept
    in the JSON file at `path`), so a run that starts while the machine is disturbed is still measured against a
    quiet line. A machine that got slower for good raises the remembered quartile after a few runs."""
    import json
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    try:
        book = json.loads(path.read_text(encoding="utf-8"))
        past = [float(x) for x in book.get(key, [])] if isinstance(book, dict) else []
    except (OSError, ValueError, TypeError):
        book, past = {}, []
    if measured_s is None:
        return baseline_of(past) if past else None
    history = (past + [float(measured_s)])[-HISTORY:]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**(book if isinstance(book, dict) else {}), key: history}, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only loses the memory
    return min(float(measured_s), baseline_of(past)) if past else float(measured_s)
