"""The lean text-to-image loop: tokenize → encode → sample (NumPy) → decode. No torch on the ONNX path."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.integrity import check_finite
from shanshui.pngmeta import model_label
from shanshui.runtime import img2img, schedules
from shanshui.runtime.backends import OrtComponents, TorchComponents
from shanshui.runtime.denoiser import GuidedDenoiser
from shanshui.runtime.samplers import SAMPLERS
from shanshui.runtime.tokenizer import open_tokenizer

SIGMA_SCHEDULES = {  # which σ placement each sampler uses (the one of the diffusers scheduler it matches)
    "ddim": lambda cfg, n: schedules.ddim_sigmas(cfg, n),
    "euler": lambda cfg, n: schedules.sigmas_for(cfg, n, "ddim"),
    "euler_a": lambda cfg, n: schedules.sigmas_for(cfg, n, "ddim"),
    "dpmpp_2m": lambda cfg, n: schedules.sigmas_for(cfg, n, "dpm"),
}


@dataclass
class Request:
    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    guidance: float = 7.5
    seed: int = 0
    height: int | None = None
    width: int | None = None
    sampler: str = "dpmpp_2m"
    num_images: int = 1
    init_image: object = None  # image-to-image: a path or an (H, W, 3) uint8 array (see img2img.py)
    strength: float = 0.6  # image-to-image: how much of the schedule repaints it (0 keeps it, 1 almost ignores it)


@dataclass
class Result:
    images: list[np.ndarray]  # each (H, W, 3) uint8
    params: dict
    timings: dict = field(default_factory=dict)
    truncated: bool = False
    negative_truncated: bool = False


def default_model_dir() -> Path:
    """The model shipped inside the package (its ONNX export)."""
    from shanshui import models

    path = models.default_model_path()
    if path is None:
        raise ShanshuiError("no default model ships with this install yet; pass --model with an export or diffusers folder")
    return path


def _kind(root: Path) -> str:
    from shanshui.engines.build import ENGINE_MANIFEST
    from shanshui.export.manifest import MANIFEST

    if not root.is_dir():
        raise ShanshuiError(f"model folder {root} does not exist; pass an export folder or a diffusers folder")
    if (root / MANIFEST).is_file():
        return "onnx"
    from shanshui.export.foreign import is_foreign_onnx

    if is_foreign_onnx(root):  # Optimum's ONNX layout, no manifest of ours
        return "onnx"
    if (root / ENGINE_MANIFEST).is_file():
        return "engines"
    if (root / "model_index.json").is_file() and (root / "unet").is_dir():
        return "diffusers"
    raise ShanshuiError(f"{root} is neither a shanshui export nor a diffusers folder; make one with `shanshui export` or `shanshui init`")


class Pipeline:
    """A loaded model: tokenizer, components on one backend, scheduler config and sizes."""

    def __init__(self, model_dir: Path | None = None, backend: str = "auto", device: str = "auto", threads: int | None = None,
                 precision: str | None = None, cuda_graphs: bool | None = None, request: Request | None = None):
        """`request`, when given, is validated against the model before any component loads."""
        t0 = time.perf_counter()
        root = Path(model_dir) if model_dir is not None else default_model_dir()
        kind, engine_dir = _kind(root), None
        if kind == "engines":  # a folder from `shanshui engine build --out`: it names its export
            from shanshui.engines.build import read_engine_manifest
            from shanshui.export.manifest import MANIFEST

            engine_dir, root = root, Path(read_engine_manifest(root)["export"])
            backend = "tensorrt" if backend == "auto" else backend
            if not (root / MANIFEST).is_file():
                raise ShanshuiError(f"the engines in {engine_dir} were built from {root}, which is no longer an export; "
                                    f"rebuild them with `shanshui engine build EXPORT --out {engine_dir}`")
            kind = "onnx"
        backend = {"onnx": "onnxruntime", "diffusers": "torch"}[kind] if backend == "auto" else backend
        if kind == "onnx" and backend not in ("onnxruntime", "tensorrt"):
            raise ShanshuiError(f"{root} is an ONNX export: use --backend onnxruntime or tensorrt, or point --model at the diffusers folder for torch")
        if kind == "diffusers" and backend != "torch":
            raise ShanshuiError(f"{root} is a diffusers folder: run `shanshui export {root}` for {backend}, or use --backend torch")
        if precision not in (None, "fp32") and backend != "torch":
            raise ShanshuiError(f"--precision is for the torch backend; {backend} runs the precision chosen at export "
                                f"(`shanshui export --precision`) or engine build (`shanshui engine build --precision`)")
        if cuda_graphs and backend == "onnxruntime":
            raise ShanshuiError("--cuda-graphs is for --backend torch or tensorrt")
        self.root, self.backend = root, backend
        self.host_memory = backend != "tensorrt" and device != "cuda"  # activations live in this machine's memory
        if kind == "onnx":
            from shanshui.export.manifest import open_exported

            exported = open_exported(root)
            m = exported.manifest
            self.dims = exported.dims
            self.default_size = (exported.shapes.height, exported.shapes.width)
            self.scaling_factor = float(m["vae_scaling_factor"])
            self.tokenizer = open_tokenizer(root / "tokenizer", m["tokenizer"]["max_length"], m["tokenizer"]["pad_token"])
            self.size_range = (self.dims.size_multiple, exported.shapes.max_size)  # min_size is TensorRT's, ORT runs smaller
            if request is not None:
                self.validate(request)
            if backend == "tensorrt":
                from shanshui.runtime.trt_backend import TrtComponents

                self.components = TrtComponents(exported, engine_dir, device=device, cuda_graphs=cuda_graphs is not False)
            else:
                self.components = OrtComponents(exported, device=device, threads=threads)
        else:
            from shanshui.export.source import model_resolution, open_source

            source = open_source(root)
            self.dims = source.dims
            res = model_resolution(root)
            self.default_size = (res, res)
            self.scaling_factor = source.vae_scaling_factor
            self.tokenizer = open_tokenizer(root / "tokenizer", source.dims.text_len)
            self.size_range = (self.dims.size_multiple, limits.DEFAULT_MAX_SIZE)
            if request is not None:
                self.validate(request)
            self.components = TorchComponents.from_folder(root, device=device, threads=threads, dtype=precision or "fp32",
                                                          cuda_graphs=bool(cuda_graphs))
        with open(root / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
            self.scheduler = schedules.with_class_defaults(json.load(f))
        self.load_seconds = time.perf_counter() - t0

    @classmethod
    def from_parts(cls, components, tokenizer, scheduler: dict, dims, scaling_factor: float, size: tuple[int, int],
                   root: Path | None = None, backend: str = "torch") -> "Pipeline":
        """A pipeline over components already in memory (e.g. the models being trained)."""
        self = cls.__new__(cls)
        self.components, self.tokenizer, self.dims = components, tokenizer, dims
        self.scheduler = schedules.with_class_defaults(scheduler)
        self.scaling_factor, self.default_size, self.root, self.backend, self.load_seconds = scaling_factor, size, root, backend, 0.0
        return self

    def validate(self, req: Request) -> tuple[int, int]:
        limits.check_request(req)
        if req.sampler not in SAMPLERS:
            raise ShanshuiError(f"unknown sampler {req.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if req.init_image is not None:
            img2img.skipped_steps(req.steps, req.strength)  # checks the strength
        h = self.default_size[0] if req.height is None else req.height
        w = self.default_size[1] if req.width is None else req.width
        m = self.dims.size_multiple
        for name, v in (("height", h), ("width", w)):
            if v <= 0 or v % 8:
                raise ShanshuiError(f"{name} {v} is not a positive multiple of 8; try {max(8, round(v / 8) * 8)}")
            if v % m:
                raise ShanshuiError(f"{name} {v} must be a multiple of {m} for this model; try {max(m, round(v / m) * m)}")
            limits.check_size(name, v, m, *getattr(self, "size_range", (m, max(v, *self.default_size))), f"model {self.label()}")
        if getattr(self, "host_memory", False):
            limits.check_memory(req.num_images, h, w, self.dims.vae_scale, m, getattr(self, "size_range", (m,))[0])
        return h, w

    def label(self) -> str:
        return Path(self.root).name if self.root is not None else "in memory"

    def __call__(self, req: Request, callback: Callable[[int, int], None] | None = None) -> Result:
        h, w = self.validate(req)
        timings = {}
        t0 = time.perf_counter()
        n = req.num_images
        ids, truncated = self.tokenizer([req.prompt] * n + [req.negative_prompt] * n)
        emb = check_finite("text encoder", self.components.text_encoder(ids))  # (2n, L, D)
        cond, uncond = emb[:n], emb[n:]
        timings["text_encoder_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        sigmas = SIGMA_SCHEDULES[req.sampler](self.scheduler, req.steps)
        rng = np.random.default_rng(req.seed)
        shape = (n, self.dims.latent_channels, h // self.dims.vae_scale, w // self.dims.vae_scale)
        if req.init_image is None:
            x = rng.standard_normal(shape) * np.sqrt(1.0 + sigmas[0] ** 2)  # float64 in σ-space
        else:  # image-to-image: the picture's latents, noised to the σ where the kept steps begin
            image = img2img.load_init_image(req.init_image, h, w)
            skip = img2img.skipped_steps(req.steps, req.strength)
            x, sigmas = img2img.start(self.components, image, self.scaling_factor, sigmas, skip, n, rng)
        model = GuidedDenoiser.from_scheduler(self.components.unet, cond, uncond, req.guidance, self.scheduler)
        x = SAMPLERS[req.sampler](model, x, sigmas, rng=rng, callback=callback)
        latents = check_finite("U-Net", x) / np.sqrt(1.0 + sigmas[-1] ** 2)  # back to the DDPM latent (σ_final may be > 0 for DDIM)
        timings["denoise_s"] = time.perf_counter() - t1
        timings["unet_calls"] = model.calls

        t2 = time.perf_counter()
        decoded = check_finite("VAE decoder", self.components.vae_decoder((latents / self.scaling_factor).astype(np.float32)))
        images = [np.round((np.clip(d, -1, 1).transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8) for d in decoded]
        timings["vae_decoder_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        params = {**asdict(req), "height": h, "width": w, "backend": self.backend, "model": model_label(self.root),
                  "init_image": img2img.init_name(req.init_image)}
        if req.init_image is None:
            params.pop("strength")
        return Result(images=images, params=params, timings=timings, truncated=truncated[0], negative_truncated=truncated[n])
