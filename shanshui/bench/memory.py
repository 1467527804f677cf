"""Peak memory of the current process: resident set (per stage, resettable on Linux) and GPU memory.

Linux: writing "5" to /proc/self/clear_refs resets the resident high-water mark (VmHWM in /proc/self/status), so
each stage gets its own peak. Elsewhere resource.getrusage's ru_maxrss is used: the peak since the process started,
which cannot be reset; the method is recorded so a report says which one it is. Standard library only: the
stable-diffusion.cpp worker loads this file by path from its own venv.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"


def _status_kb(field: str) -> int | None:
    try:
        with open(STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRss:
    """reset() before a stage, peak_mb() after it. `method` says how the peak is measured."""

    def __init__(self):
        self.method = "clear_refs" if self._try_reset() else "getrusage"

    @staticmethod
    def _try_reset() -> bool:
        if _status_kb("VmHWM") is None:
            return False
        try:
            with open(CLEAR_REFS, "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @property
    def note(self) -> str:
        if self.method == "clear_refs":
            return "peak RSS per stage (VmHWM reset through /proc/self/clear_refs)"
        return "peak RSS since the process started (getrusage; cannot be reset between stages here)"

    def reset(self) -> None:
        if self.method == "clear_refs":
            self._try_reset()

    def peak_mb(self) -> float:
        if self.method == "clear_refs":
            kb = _status_kb("VmHWM")
            if kb is not None:
                return kb / 1024
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


class GpuPeak:
    """Peak GPU memory of this process. torch: the caching allocator's max_memory_allocated (after synchronize).
    Other CUDA users (ONNX Runtime, TensorRT): this process's used memory as NVML reports it, sampled every 50 ms
    by a thread (includes the CUDA context). `method` is None where nothing can be measured."""

    def __init__(self, kind: str):
        self.kind, self.method, self._peak, self._stop = kind, None, 0.0, None
        if kind == "torch":
            self.method = "torch.cuda.max_memory_allocated"
        elif kind == "nvml":
            try:
                import pynvml  # noqa: F401  (nvidia-ml-py)

                self.method = "nvml per-process used memory, sampled every 50 ms"
            except ImportError:
                import shutil

                self.method = "nvidia-smi per-process used memory, sampled every 0.2 s" if shutil.which("nvidia-smi") else None

    def reset(self) -> None:
        if self.kind == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.method:
            self.stop()
            self._peak = 0.0
            self._stop = threading.Event()
            threading.Thread(target=self._sample, args=(self._stop,), daemon=True).start()

    def _sample(self, stop: threading.Event) -> None:
        pid = os.getpid()
        if self.method.startswith("nvml"):
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            while not stop.is_set():
                used = sum(p.usedGpuMemory or 0 for h in handles for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid == pid)
                self._peak = max(self._peak, used / 2**20)
                stop.wait(0.05)
            return
        import subprocess

        while not stop.is_set():
            q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
            for line in q.stdout.splitlines():
                fields = [f.strip() for f in line.split(",")]
                if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
                    self._peak = max(self._peak, float(fields[1]))  # MiB
            stop.wait(0.2)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def peak_mb(self) -> float | None:
        if self.kind == "torch":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return self._peak if self.method else None
