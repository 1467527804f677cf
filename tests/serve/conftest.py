"""Serve fixtures: the shipped model loaded once, an app over it, a real uvicorn server on a loopback port."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

TINY = {"steps": 2, "width": 64, "height": 64}  # the shipped model at its smallest: a fraction of a second a picture


@pytest.fixture(scope="session")
def shipped_pipe():
    from shanshui.runtime.pipeline import open_pipeline

    return open_pipeline(None, threads=1)


class GatedPipe:
    """A pipeline whose calls wait for `gate` (to hold the painter busy); `entered` is set when one starts."""

    def __init__(self, pipe):
        self.pipe, self.gate, self.entered = pipe, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, req, callback=None):
        self.entered.set()
        assert self.gate.wait(30), "gate never opened"
        return self.pipe(req, callback=callback)


@contextlib.contextmanager
def serving(app):
    """Run `app` under uvicorn on 127.0.0.1 and a free port in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.painter.close()
