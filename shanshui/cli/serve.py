"""`shanshui serve`: check the binding, load the model once, run uvicorn over shanshui.serve.app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shanshui.env import default_threads
from shanshui.errors import ShanshuiError
from shanshui.limits import check_threads
from shanshui.pngmeta import model_label
from shanshui.runtime.backends import Backend, Device
from shanshui.runtime.pipeline import open_pipeline
from shanshui.serve import limits
from shanshui.serve.app import Settings, create_app
from shanshui.serve.security import NO_KEY_OPT_OUT, check_binding
from shanshui.spec.contract import TorchPrecision


def serve(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Export folder (ONNX Runtime) or diffusers folder (PyTorch); default: the shipped model.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port (7860, as AUTOMATIC1111's web UI).")] = 7860,
    max_queue: Annotated[int, typer.Option(min=1, max=1024, help="Jobs that may wait behind the one being painted; more get 429.")] = limits.DEFAULT_MAX_QUEUE,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds a request may take, queueing included; then 504 and the job stops.")] = limits.DEFAULT_TIMEOUT_S,
    api_key: Annotated[Optional[str], typer.Option(envvar="SHANSHUI_API_KEY", help="Require this key (Authorization: Bearer KEY, or HTTP Basic with it as password).")] = None,
    insecure_no_api_key: Annotated[bool, typer.Option(NO_KEY_OPT_OUT, help="Allow a non-loopback --host without --api-key: anyone who reaches it can paint.")] = False,
    cors_origin: Annotated[Optional[list[str]], typer.Option(help="Allow browser pages from this origin to call the API (repeatable); CORS is off by default.")] = None,
    backend: Annotated[Backend, typer.Option(help="As `shanshui generate --backend`.")] = Backend.auto,
    device: Annotated[Device, typer.Option(help="As `shanshui generate --device`.")] = Device.auto,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: SHANSHUI_THREADS or the runtime's choice).")] = None,
    precision: Annotated[Optional[TorchPrecision], typer.Option(help="torch backend only, as `shanshui generate --precision`.")] = None,
    cuda_graphs: Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs", help="As `shanshui generate --cuda-graphs`.")] = None,
):
    """Serve a web page to paint from and an AUTOMATIC1111-compatible HTTP API (/sdapi/v1/txt2img, ...)."""
    warning = check_binding(host, api_key, insecure_no_api_key)  # before any expensive work
    if api_key is not None and len(api_key) < 16:
        raise ShanshuiError("--api-key must be at least 16 characters; e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe())'`")
    try:
        import uvicorn
    except ImportError as e:
        raise ShanshuiError(f"serving needs {e.name}; reinstall shanshui (`pip install shanshui`)") from None
    pipe = open_pipeline(model, backend=backend.value, device=device.value, threads=check_threads(threads) or default_threads(),
                    precision=precision.value if precision else None, cuda_graphs=cuda_graphs)
    app = create_app(pipe, Settings(max_queue=max_queue, api_key=api_key, timeout_s=timeout, cors_origins=cors_origin or []))
    if warning:
        typer.echo(warning, err=True)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {model_label(pipe.root)} on http://{shown}:{port}/ (page: /, API: /sdapi/v1, "
               f"schema: /openapi.json); Ctrl-C stops", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        app.state.painter.close()
