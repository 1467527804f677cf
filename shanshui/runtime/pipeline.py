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
from shanshui.metrics import to_uint8
from shanshui.pngmeta import model_label
from shanshui.runtime import img2img, schedules
from shanshui.runtime.backends import OrtComponents, TorchComponents
from shanshui.runtime.denoiser import GuidedDenoiser
from shanshui.runtime.lowmem import LowMemComponents
from shanshui.runtime.samplers import SAMPLERS, SIGMA_SCHEDULES, TIMESTEP_RULES
from shanshui.runtime.tokenizer import open_tokenizer
from shanshui.runtime.trt_backend import TrtComponents
from shanshui.spec.engine_manifest import read_engine_manifest
from shanshui.spec.folders import default_model_dir, folder_kind
from shanshui.spec.manifest import MANIFEST, open_exported
from shanshui.spec.source import model_resolution, open_source


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


class Pipeline:
    """A loaded model: tokenizer, components on one backend (see runtime.backends), scheduler config and sizes."""

    def __init__(self, components, tokenizer, scheduler: dict, dims, scaling_factor: float, size: tuple[int, int],
                 root: Path | None = None, backend: str = "torch", load_seconds: float = 0.0,
                 size_range: tuple[int, int] | None = None, host_memory: bool = False, memory=None):
        """A pipeline over loaded components (open_pipeline loads them from a folder; training passes its own).
        size_range: the smallest and largest image side (None: any multiple of the stride); host_memory: whether
        activations live in this machine's memory (then a request that cannot fit is refused); memory: the
        runtime.lowmem.Strategy the components run under (None: everything resident)."""
        self.components, self.tokenizer, self.dims, self.memory = components, tokenizer, dims, memory
        self.scheduler = schedules.with_class_defaults(scheduler)
        self.scaling_factor, self.default_size = scaling_factor, size
        self.root, self.backend, self.load_seconds = root, backend, load_seconds
        self.size_range, self.host_memory = size_range, host_memory

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
            lo, hi = self.size_range or (m, max(v, *self.default_size))
            limits.check_size(name, v, m, lo, hi, f"model {model_label(self.root) if self.root else 'in memory'}")
        if self.host_memory:
            limits.check_memory(req.num_images, h, w, self.dims.vae_scale, m, (self.size_range or (m,))[0])
        return h, w

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
        model = GuidedDenoiser.from_scheduler(self.components.unet, cond, uncond, req.guidance, self.scheduler,
                                              TIMESTEP_RULES.get(req.sampler))
        x = SAMPLERS[req.sampler](model, x, sigmas, rng=rng, callback=callback)
        latents = check_finite("U-Net", x) / np.sqrt(1.0 + sigmas[-1] ** 2)  # back to the DDPM latent (σ_final may be > 0 for DDIM)
        timings["denoise_s"] = time.perf_counter() - t1
        timings["unet_calls"] = model.calls

        t2 = time.perf_counter()
        decoded = check_finite("VAE decoder", self.components.vae_decoder((latents / self.scaling_factor).astype(np.float32)))
        images = list(to_uint8(decoded))  # each (H, W, 3)
        timings["vae_decoder_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        params = {**asdict(req), "height": h, "width": w, "backend": self.backend, "model": model_label(self.root),
                  "init_image": img2img.init_name(req.init_image)}
        if self.memory is not None:
            params["memory"] = self.memory.name
        if req.init_image is None:
            params.pop("strength")
        return Result(images=images, params=params, timings=timings, truncated=truncated[0], negative_truncated=truncated[n])


def open_pipeline(model_dir: Path | None = None, backend: str = "auto", device: str = "auto", threads: int | None = None,
                  precision: str | None = None, cuda_graphs: bool | None = None, request: Request | None = None,
                  memory=None) -> Pipeline:
    """Load a model folder (export, engine folder or diffusers folder; default: the shipped model) on a backend
    (`auto`: the folder's own). Every choice, and `request` when given, is checked before anything is loaded.
    memory: a runtime.lowmem.Strategy (ONNX Runtime on the CPU; see --low-memory), None: everything resident."""
    t0 = time.perf_counter()
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    root, kind, engine_dir, backend = _resolve(root, backend, precision, cuda_graphs)
    if memory is not None and (kind != "onnx" or backend != "onnxruntime"):
        raise ShanshuiError("--low-memory and --max-memory are for ONNX exports on --backend onnxruntime; "
                            "run `shanshui export` on the model folder and pass the export")
    if kind == "onnx":
        exported = open_exported(root)  # sizes and hashes of its files checked
        m = exported.manifest
        dims, size = exported.dims, (exported.shapes.height, exported.shapes.width)
        scaling_factor, top = float(m["vae_scaling_factor"]), exported.shapes.max_size  # its min_size is TensorRT's
        tokenizer = open_tokenizer(root / "tokenizer", m["tokenizer"]["max_length"], m["tokenizer"]["pad_token"])
    else:
        source = open_source(root)
        res = model_resolution(root)
        dims, size, scaling_factor, top = source.dims, (res, res), source.vae_scaling_factor, limits.DEFAULT_MAX_SIZE
        tokenizer = open_tokenizer(root / "tokenizer", source.dims.text_len)
    with open(root / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
        scheduler = json.load(f)
    pipe = Pipeline(None, tokenizer, scheduler, dims, scaling_factor, size, root, backend,
                    size_range=(dims.size_multiple, top), host_memory=backend != "tensorrt" and device != "cuda",
                    memory=memory)
    if request is not None:
        pipe.validate(request)  # before any component loads
    if kind != "onnx":
        pipe.components = TorchComponents.from_folder(root, device=device, threads=threads, dtype=precision or "fp32",
                                                      cuda_graphs=bool(cuda_graphs))
    elif backend == "tensorrt":
        pipe.components = TrtComponents(exported, engine_dir, device=device, cuda_graphs=cuda_graphs is not False)
    elif memory is not None:
        pipe.components = LowMemComponents(exported, memory, device=device, threads=threads)
    else:
        pipe.components = OrtComponents(exported, device=device, threads=threads)
    pipe.load_seconds = time.perf_counter() - t0
    return pipe


def _resolve(root: Path, backend: str, precision: str | None, cuda_graphs: bool | None) -> tuple[Path, str, Path | None, str]:
    """(model root, 'onnx' or 'diffusers', engine folder or None, backend), or a one-line error for a bad combination."""
    kind, engine_dir = folder_kind(root), None
    if kind == "engines":  # a folder from `shanshui engine build --out`: it names its export
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
    return root, kind, engine_dir, backend
