"""The FastAPI app: the page, the A1111-compatible /sdapi/v1 API, /health and /metrics over one Painter."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from shanshui.errors import ShanshuiError
from shanshui.pngmeta import SAMPLER_NAMES, model_label
from shanshui.serve import a1111, limits
from shanshui.serve.metrics import ServeMetrics
from shanshui.serve.painter import Job, Painter, QueueFull
from shanshui.serve.security import BodyLimit, key_matches

log = logging.getLogger("shanshui.serve")
POLL_S = 0.05  # how often a waiting request looks at its job and its client


@dataclass
class Settings:
    max_queue: int = limits.DEFAULT_MAX_QUEUE
    api_key: str | None = None
    timeout_s: float = limits.DEFAULT_TIMEOUT_S
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = limits.MAX_BODY_BYTES


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def size_presets(default_size: tuple[int, int], multiple: int) -> list[dict]:
    """Square sheet, tall hanging scroll 立轴 (1:2), wide handscroll 手卷 (2:1), small and large squares."""
    s = max(default_size)

    def r(v: float) -> int:
        return int(min(limits.MAX_SIDE, max(multiple, round(v / multiple) * multiple)))

    return [{"key": "square", "zh": "方幅", "en": "square sheet", "width": r(s), "height": r(s)},
            {"key": "tall", "zh": "立轴", "en": "hanging scroll", "width": r(s * 0.75), "height": r(s * 1.5)},
            {"key": "wide", "zh": "手卷", "en": "handscroll", "width": r(s * 1.5), "height": r(s * 0.75)},
            {"key": "small", "zh": "小方幅", "en": "small square", "width": r(s / 2), "height": r(s / 2)},
            {"key": "large", "zh": "大方幅", "en": "large square", "width": r(s * 2), "height": r(s * 2)}]


def create_app(pipe, settings: Settings | None = None, painter: Painter | None = None) -> FastAPI:
    """An app over a loaded Pipeline. The painter thread starts here; app.state.painter.close() stops it."""
    settings = settings or Settings()
    painter = painter or Painter(pipe, settings.max_queue)
    metrics = ServeMetrics(painter)
    label = model_label(getattr(pipe, "root", None))
    app = FastAPI(title="shanshui", version=a1111.__version__, docs_url=None, redoc_url=None,
                  description="Chinese landscape painting from text; AUTOMATIC1111-compatible /sdapi/v1 API.")
    app.state.painter, app.state.metrics, app.state.settings = painter, metrics, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    _add_error_handlers(app, metrics)

    def require_key(request: Request) -> None:
        if settings.api_key and not key_matches(request.headers.get("authorization"), request.headers.get("x-api-key"),
                                                settings.api_key):
            metrics.rejections.labels("unauthorized").inc()
            raise HTTPProblem(401, "missing or wrong API key; send `Authorization: Bearer KEY`",
                              {"WWW-Authenticate": "Bearer"})

    api = APIRouter(dependencies=[Depends(require_key)])
    _add_painting_routes(api, pipe, painter, metrics, settings)
    _add_info_routes(api, pipe, painter, metrics, label)
    app.include_router(api)

    static = resources.files("shanshui.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": label, "busy": painter.current is not None, "queue": painter.queue.qsize(),
                "max_queue": painter.queue.maxsize, "images_painted": painter.images_painted}

    return app


def _add_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    @app.exception_handler(ShanshuiError)
    async def bad_input(request: Request, e: ShanshuiError):
        metrics.rejections.labels("invalid").inc()
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, e: RequestValidationError):
        metrics.rejections.labels("invalid").inc()
        errors = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
                  for err in e.errors()]  # no "input": it may echo megabytes of base64
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return JSONResponse({"detail": f"{where}: {first['msg']}", "errors": errors}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        metrics.rejections.labels("queue_full").inc()
        return JSONResponse({"detail": str(e)}, status_code=429, headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, e: HTTPProblem):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)


def _add_painting_routes(api: APIRouter, pipe, painter: Painter, metrics: ServeMetrics, settings: Settings) -> None:
    async def paint(request: Request, body: a1111.Txt2Img, endpoint: str, init_image=None) -> dict:
        t0 = time.perf_counter()
        seed = a1111.resolve_seed(body.seed)
        reqs = a1111.pipeline_requests(body, seed, init_image)
        a1111.validate_all(pipe, body, reqs)
        if init_image is not None and not getattr(pipe.components, "has_encoder", False):
            raise ShanshuiError("this model has no VAE encoder, so it cannot do img2img; serve an export made by "
                                "`shanshui export` (it includes vae_encoder/)")
        job = painter.submit(Job(reqs, **({"id": body.force_task_id} if body.force_task_id else {})))
        await _wait(request, job, metrics, settings.timeout_s)
        if job.state == "cancelled":
            metrics.rejections.labels("interrupted").inc()
            raise HTTPProblem(409, f"the job was stopped ({job.cancel_reason}) before it finished")
        if job.state == "failed":
            if isinstance(job.error, ShanshuiError):
                raise job.error
            log.error("painting failed", exc_info=job.error)
            raise HTTPProblem(500, f"painting failed ({type(job.error).__name__}); see the server's log")
        images = await run_in_threadpool(lambda: [a1111.png_base64(im, p) for im, p in zip(job.images, job.params)])
        job.images = []  # the job stays in painter.recent (for progress queries) without its pixels
        metrics.images.inc(len(images))
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return {"images": images, "parameters": a1111.echo_parameters(body),
                "info": a1111.info_string(body, job.params, job.created)}

    @api.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request, body: a1111.Txt2Img) -> dict:
        """Text to image, as AUTOMATIC1111's web UI answers it: base64 PNGs (with `parameters` metadata) and info."""
        return await paint(request, body, "txt2img")

    @api.post("/sdapi/v1/img2img")
    async def img2img(request: Request, body: a1111.Img2Img) -> dict:
        """Image to image: init_images[0] repainted with denoising_strength in (0, 1]."""
        image = await run_in_threadpool(a1111.decode_init_image, body.init_images[0])
        return await paint(request, body, "img2img", init_image=image)

    @api.post("/sdapi/v1/interrupt")
    def interrupt() -> dict:
        """Stop the job being painted (its request answers 409)."""
        return {"interrupted": painter.interrupt()}


async def _wait(request: Request, job: Job, metrics: ServeMetrics, timeout_s: float) -> None:
    """Wait for the painter; a client that goes away or a request past its time cancels the job."""
    deadline = time.monotonic() + timeout_s
    while not job.done.is_set():
        await asyncio.sleep(POLL_S)
        if await request.is_disconnected():
            job.cancel("client disconnected")
            metrics.rejections.labels("disconnected").inc()
            raise HTTPProblem(499, "client disconnected")
        if time.monotonic() > deadline:
            job.cancel("request timeout")
            metrics.rejections.labels("timeout").inc()
            raise HTTPProblem(504, f"the request took longer than {timeout_s:g} s (queueing included); try fewer "
                                   "steps or a smaller size, or start the server with a larger --timeout")


def _add_info_routes(api: APIRouter, pipe, painter: Painter, metrics: ServeMetrics, label: str) -> None:
    @api.get("/sdapi/v1/progress")
    def progress(id_task: str | None = None) -> dict:
        """The running job's progress (or, with id_task = a request's force_task_id, that job's)."""
        job = painter.find(id_task) if id_task else painter.current
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, painter), "current_image": None,
                    "textinfo": "unknown task" if id_task else "idle", "status": "unknown" if id_task else "idle",
                    "queue_position": 0}
        p = job.progress()
        if job.started and p > 0:
            eta = (time.time() - job.started) * (1 - p) / p
        else:
            eta = painter.seconds_per_image * (len(job.requests) + painter.position(job))
        text = (f"image {job.image_no + 1}/{len(job.requests)}, step {job.step}/{job.steps}" if job.state == "running"
                else job.state)
        return {"progress": round(p, 4), "eta_relative": round(eta, 2), "state": _state(job, painter),
                "current_image": None, "textinfo": text, "status": job.state, "queue_position": painter.position(job)}

    @api.get("/sdapi/v1/samplers")
    def samplers() -> list[dict]:
        return a1111.sampler_list()

    @api.get("/sdapi/v1/sd-models")
    def sd_models() -> list[dict]:
        """The one loaded model, named by its folder's name (never a path)."""
        return [{"title": label, "model_name": label, "hash": None, "sha256": None, "filename": label, "config": None}]

    @api.get("/sdapi/v1/options")
    def options() -> dict:
        return {"sd_model_checkpoint": label, "samples_format": "png", "CLIP_stop_at_last_layers": 1,
                "sd_checkpoint_hash": None}

    @api.post("/sdapi/v1/options")
    def set_options(body: dict[str, Any]) -> None:
        """Accepted and ignored (this server has no settings to change), except a request for another model."""
        wanted = body.get("sd_model_checkpoint")
        if wanted is not None and wanted != label:
            raise ShanshuiError(f"only {label} is loaded; start another `shanshui serve --model …` for {wanted!r}")

    @api.get("/api/config")
    def config() -> dict:
        """What the page needs: model, sizes, samplers, defaults, whether image-to-image is possible, limits."""
        h, w = pipe.default_size
        return {"model": label, "default_width": w, "default_height": h, "size_multiple": pipe.dims.size_multiple,
                "presets": size_presets((h, w), pipe.dims.size_multiple), "samplers": list(SAMPLER_NAMES.values()),
                "img2img": bool(getattr(pipe.components, "has_encoder", False)),
                "defaults": {"steps": 25, "cfg_scale": 7.5, "sampler_name": "DPM++ 2M"},
                "limits": {"max_side": limits.MAX_SIDE, "max_prompt_chars": limits.MAX_PROMPT_CHARS,
                           "max_images": limits.MAX_IMAGES, "max_upload_bytes": limits.MAX_UPLOAD_BYTES}}

    @api.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _state(job: Job | None, painter: Painter) -> dict:
    return {"skipped": False, "interrupted": bool(job and job.cancel_reason == "interrupted"),
            "job": job.id if job else "", "job_count": painter.queue.qsize() + (1 if painter.current else 0),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(job.created)) if job else "",
            "job_no": job.image_no if job else 0, "sampling_step": job.step if job else 0,
            "sampling_steps": job.steps if job else 0}
