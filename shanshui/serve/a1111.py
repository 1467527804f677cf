"""AUTOMATIC1111's web-UI API shapes: request bodies, sampler names, the `info` string, base64 PNGs.

Field names and meanings follow the web UI's /sdapi/v1 API so that existing clients work unchanged; fields this
model has no use for (restore_faces, enable_hr, scripts, ...) are accepted and ignored, as the web UI's own models
accept them. Each image is painted alone with seed + i, so `all_seeds` is honest: every image is reproducible by
its own seed (`shanshui generate --seed`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shanshui import __version__
from shanshui.errors import ShanshuiError
from shanshui.pngmeta import SAMPLER_NAMES, a1111_parameters, png_info
from shanshui.runtime.img2img import DEFAULT_STRENGTH
from shanshui.runtime.pipeline import Request
from shanshui.serve import limits

SAMPLER_ALIASES = {"dpmpp_2m": ["k_dpmpp_2m"], "euler_a": ["k_euler_a", "k_euler_ancestral"], "euler": ["k_euler"],
                   "ddim": [], "dpmpp_2m_karras": ["k_dpmpp_2m_ka"], "euler_karras": ["k_euler_ka"]}


def sampler_key(name: str | None) -> str:
    """Our sampler key for an A1111 name ("DPM++ 2M"), a k-diffusion alias ("k_euler_a") or our own key."""
    if name is None or name == "":
        return "dpmpp_2m"
    wanted = name.strip().lower()
    for key, label in SAMPLER_NAMES.items():
        if wanted in (key, label.lower(), *SAMPLER_ALIASES.get(key, [])):
            return key
    raise ShanshuiError(f"unknown sampler_name {name!r}; choose one of {', '.join(SAMPLER_NAMES.values())}")


def sampler_list() -> list[dict]:
    return [{"name": label, "aliases": [key, *SAMPLER_ALIASES.get(key, [])], "options": {}}
            for key, label in SAMPLER_NAMES.items()]


class Txt2Img(BaseModel):
    """POST /sdapi/v1/txt2img. None means the model's default (size) or the CLI's default (others)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    steps: int = 25
    cfg_scale: float = 7.5
    width: int | None = Field(None, ge=8, le=limits.MAX_SIDE)
    height: int | None = Field(None, ge=8, le=limits.MAX_SIDE)
    seed: int = Field(-1, ge=-1, le=limits.MAX_SEED, description="-1: a random seed")
    sampler_name: str | None = None
    sampler_index: str | None = Field(None, description="older clients' name for sampler_name")
    batch_size: int = Field(1, ge=1, le=limits.MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=limits.MAX_IMAGES)
    force_task_id: str | None = Field(None, max_length=64, description="id to follow with /sdapi/v1/progress?id_task=")


class Img2Img(Txt2Img):
    """POST /sdapi/v1/img2img: the first of init_images (base64 PNG/JPEG, data: URL allowed) is repainted."""

    init_images: list[str] = Field(..., min_length=1, max_length=1)
    denoising_strength: float = DEFAULT_STRENGTH


def decode_init_image(data: str) -> np.ndarray:
    """(H, W, 3) uint8 from a base64 image, within the upload limits."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > limits.MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise ShanshuiError(f"init image is larger than {limits.MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller PNG or JPEG")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ShanshuiError("init_images[0] is not valid base64; send the PNG or JPEG file base64-encoded") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG", "WEBP"):
                raise ShanshuiError(f"init image is {im.format}; send a PNG, JPEG or WebP")
            if im.width * im.height > limits.MAX_UPLOAD_PIXELS:
                raise ShanshuiError(f"init image is {im.width}x{im.height}; at most {limits.MAX_UPLOAD_PIXELS} pixels")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise ShanshuiError("init_images[0] is not a readable image; send a PNG or JPEG") from None


def resolve_seed(seed: int) -> int:
    return secrets.randbelow(limits.MAX_SEED + 1) if seed == -1 else seed


def pipeline_requests(body: Txt2Img, seed: int, init_image: np.ndarray | None = None) -> list[Request]:
    """One pipeline Request per image (seed, seed + 1, ...)."""
    explicit = "sampler_name" in body.model_fields_set or "sampler_index" not in body.model_fields_set
    sampler = sampler_key(body.sampler_name if explicit else body.sampler_index)
    strength = body.denoising_strength if isinstance(body, Img2Img) else DEFAULT_STRENGTH
    n = body.batch_size * body.n_iter
    return [Request(prompt=body.prompt, negative_prompt=body.negative_prompt, steps=body.steps, guidance=body.cfg_scale,
                    seed=seed + i, height=body.height, width=body.width, sampler=sampler, num_images=1,
                    init_image=init_image, strength=strength) for i in range(n)]


def validate_all(pipe, body: Txt2Img, reqs: list[Request]) -> None:
    """The CLI's checks (Pipeline.validate) on the whole job, with num_images = all images of the request."""
    if body.batch_size * body.n_iter > limits.MAX_IMAGES:
        raise ShanshuiError(f"batch_size × n_iter is {body.batch_size * body.n_iter}; at most {limits.MAX_IMAGES} images per request")
    first = reqs[0]
    pipe.validate(Request(**{**first.__dict__, "num_images": len(reqs)}))


def png_base64(image: np.ndarray, params: dict) -> str:
    """A PNG with A1111 `parameters` text and the `shanshui` JSON chunk, base64 (as the web UI answers)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", pnginfo=png_info(params))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def info_string(body: Txt2Img, image_params: list[dict], started: float) -> str:
    """The `info` field: a JSON string like the web UI's (seed, all_seeds, sampler_name, infotexts, ...)."""
    p0 = image_params[0]
    n = len(image_params)
    info = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * n,
        "negative_prompt": body.negative_prompt, "all_negative_prompts": [body.negative_prompt] * n,
        "seed": p0["seed"], "all_seeds": [p["seed"] for p in image_params],
        "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0,
        "width": p0["width"], "height": p0["height"], "sampler_name": SAMPLER_NAMES[p0["sampler"]],
        "cfg_scale": p0["guidance"], "steps": p0["steps"], "batch_size": body.batch_size, "n_iter": body.n_iter,
        "sd_model_name": p0["model"], "sd_model_hash": None,
        "denoising_strength": p0.get("strength"), "index_of_first_image": 0,
        "infotexts": [a1111_parameters(p) for p in image_params], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(started)), "clip_skip": 1,
        "version": f"shanshui {__version__}",
    }
    return json.dumps(info, ensure_ascii=False, allow_nan=False)


def echo_parameters(body: Txt2Img) -> dict:
    """The `parameters` field: the request as understood (init images left out: they can be megabytes)."""
    params = body.model_dump()
    if "init_images" in params:
        params["init_images"] = None
    return params
