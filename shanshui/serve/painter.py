"""One worker thread paints jobs from a bounded queue; a job can be cancelled while queued or between steps.

The model is loaded once (a Pipeline) and only this thread calls it, so requests never paint concurrently and
memory stays that of one painting. A full queue refuses new jobs at once (the server answers 429).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from shanshui.runtime.pipeline import Request

KEEP_FINISHED = 64  # finished jobs remembered for /sdapi/v1/progress?id_task=


class QueueFull(Exception):
    """No room in the queue; retry_after is a guess of the seconds until there is."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside the step callback to stop a job; the reason says who stopped it."""


@dataclass
class Job:
    requests: list[Request]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    state: str = "queued"  # queued -> running -> done | cancelled | failed
    image_no: int = 0  # image being painted
    step: int = 0  # sampling steps finished of that image
    steps: int = 0
    started: float | None = None
    images: list[np.ndarray] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    error: BaseException | None = None
    cancel_reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def progress(self) -> float:
        """0 … 1 over all images of the job."""
        if self.state == "done":
            return 1.0
        n = max(len(self.requests), 1)
        return min((self.image_no + (self.step / self.steps if self.steps else 0.0)) / n, 1.0)


class Painter:
    """The worker thread and its queue. `pipe` is a loaded Pipeline (or anything with the same call)."""

    def __init__(self, pipe, max_queue: int):
        self.pipe = pipe
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.current: Job | None = None
        self.recent: OrderedDict[str, Job] = OrderedDict()
        self.images_painted = 0
        self.seconds_per_image = 5.0  # running estimate for Retry-After and ETA
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="shanshui-painter", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.retry_after()) from None
        with self._lock:
            self.recent[job.id] = job
            while len(self.recent) > KEEP_FINISHED + self.queue.maxsize + 1:
                self.recent.popitem(last=False)
        return job

    def retry_after(self) -> int:
        waiting = self.queue.qsize() + (1 if self.current else 0)
        return max(1, round(waiting * self.seconds_per_image))

    def position(self, job: Job) -> int:
        """Jobs ahead of this one in the queue (0 when it is running or done)."""
        with self.queue.mutex:
            waiting = list(self.queue.queue)
        return waiting.index(job) if job in waiting else 0

    def find(self, job_id: str) -> Job | None:
        with self._lock:
            return self.recent.get(job_id)

    def interrupt(self) -> bool:
        job = self.current
        if job is None:
            return False
        job.cancel("interrupted")
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what is queued and running, stop the thread."""
        with self.queue.mutex:
            pending = list(self.queue.queue)
        for job in pending:
            job.cancel("server shutting down")
        if self.current:
            self.current.cancel("server shutting down")
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            self.current = job
            try:
                self._paint(job)
            finally:
                self.current = None
                job.done.set()

    def _paint(self, job: Job) -> None:
        if job.cancel_reason:
            job.state = "cancelled"
            return
        job.state, job.started = "running", time.time()

        def on_step(i: int, n: int) -> None:  # called by the sampler after step i of n
            job.step, job.steps = i + 1, n
            if job.cancel_reason:
                raise Cancelled(job.cancel_reason)

        try:
            for k, req in enumerate(job.requests):
                job.image_no, job.step, job.steps = k, 0, req.steps
                t0 = time.perf_counter()
                result = self.pipe(req, callback=on_step)
                job.images.append(result.images[0])
                job.params.append({**result.params, "seed": req.seed, "index": k})
                self.images_painted += 1
                self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * (time.perf_counter() - t0)
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
            job.images.clear()  # nobody will collect them; finished jobs stay in `recent` for progress queries
        except Exception as e:  # noqa: BLE001 — handed to the request, which answers it
            job.state, job.error = "failed", e
            job.images.clear()
