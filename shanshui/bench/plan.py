"""What to measure: the models, their sizes, and one row per runner × backend × device × precision this machine has.

A row that cannot run here (no GPU, no TensorRT, a peer's venv not asked for) is still listed, with the reason.
stable-diffusion.cpp (`sdcpp`) is a peer with its own weight types instead of shanshui's precisions: one row each for
q8_0 and f16 (sd.cpp converts the diffusers weights while loading), on the CPU (its venv builds the CPU backend).
Torch-free: models are resolved from their JSON files only.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui import models
from shanshui.spec.manifest import read_manifest
from shanshui.spec.source import model_resolution, resolve_source_ref
from shanshui.train.arch import ARCHS

DEFAULT_PROMPT = "一棵青松，青山环绕，云雾缭绕"


class BenchBackend(str, enum.Enum):
    onnxruntime = "onnxruntime"
    torch = "torch"
    tensorrt = "tensorrt"


class Peer(str, enum.Enum):
    diffusers = "diffusers"
    optimum = "optimum"
    sdcpp = "sdcpp"
    none = "none"


PEER_BACKENDS = {"diffusers": "torch", "optimum": "onnxruntime", "sdcpp": "ggml"}  # what each peer computes with
SDCPP_WEIGHT_TYPES = ("q8_0", "f16")  # sd.cpp's --type values measured, in report order


# What each runner/backend can run, per device (combinations outside these are not rows at all).
SUPPORTED = {
    ("onnxruntime", "cpu"): ("fp32", "fp16", "int8"),
    ("onnxruntime", "cuda"): ("fp32", "fp16", "int8"),
    ("torch", "cpu"): ("fp32",),  # PyTorch half precision on CPUs is slower than fp32 (TorchComponents refuses it)
    ("torch", "cuda"): ("fp32", "fp16", "int8"),  # int8: bitsandbytes
    ("tensorrt", "cuda"): ("fp32", "fp16", "int8"),
    ("diffusers", "cpu"): ("fp32",),
    ("diffusers", "cuda"): ("fp32", "fp16"),
    ("optimum", "cpu"): ("fp32",),
    ("optimum", "cuda"): ("fp32",),
    ("sdcpp", "cpu"): SDCPP_WEIGHT_TYPES,
    ("sdcpp", "cuda"): SDCPP_WEIGHT_TYPES,  # listed so a GPU machine says why it does not run (CPU-only venv)
}


@dataclass
class Settings:
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    warmup: int = 1
    repeats: int = 3
    stage_warmup: int = 1
    stage_repeats: int = 5
    threads: int | None = None
    quick: bool = False
    timeout_s: float | None = None  # per row; None: no limit
    steady: bool = False  # probe capacity around call blocks, re-measure disturbed ones (bench/steady.py; opt-in)
    settle_s: float = 30.0  # longest wait for a disturbed machine to settle, once per row
    min_time_s: float = 3.0  # measured generations, and direct calls of each stage, go on at least this long
    rounds: int = 3  # each row runs this many times in fresh processes, the rows taking turns

    @classmethod
    def quick_settings(cls, **kw) -> "Settings":
        """A short run: few steps, one warm-up and one measured generation; five direct calls per stage, so each row
        has a spread of its own to compare runs against."""
        base = dict(steps=4, warmup=1, repeats=1, stage_warmup=1, stage_repeats=5, min_time_s=1.0, quick=True)
        return cls(**{**base, **{k: v for k, v in kw.items() if v is not None}})


@dataclass
class ModelRef:
    name: str  # shown in row ids
    key: str  # cache folder name
    resolution: int
    source: Path | None = None  # diffusers folder (None until an arch is initialised)
    arch: str | None = None  # made with init_model into the cache when set
    exports: dict[str, Path] = field(default_factory=dict)  # precision -> an export folder given by the user


@dataclass
class Row:
    model: str
    size: int
    runner: str  # shanshui | diffusers | optimum | sdcpp
    backend: str  # onnxruntime | torch | tensorrt | ggml (what the runner computes with)
    device: str
    precision: str  # fp32 | fp16 | int8; sdcpp rows: q8_0 | f16 (sd.cpp weight types)
    status: str = "planned"  # planned | ok | failed | skipped
    reason: str | None = None
    memory: str | None = None  # a low-memory request (see bench/lowmem.py); None: everything resident

    @property
    def id(self) -> str:
        label = self.backend if self.runner == "shanshui" else self.runner
        return f"{self.model}@{self.size}/{label}-{self.device}-{self.precision}" + (f"/mem:{self.memory}" if self.memory else "")


def parse_list(text: str, enum_cls: type[enum.Enum], what: str) -> list[str]:
    """'a,b' → ['a', 'b'], each checked against the enum's values (one-line error otherwise)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    allowed = [e.value for e in enum_cls]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ShanshuiError(f"{what} {', '.join(bad) or repr(text)} is not one of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_sizes(text: str | None) -> list[int] | None:
    if text is None or not str(text).strip():
        return None
    try:
        sizes = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ShanshuiError(f"--size {text!r} must be image sizes in pixels, e.g. 256 or 256,512") from None
    for s in sizes:
        if s <= 0 or s % 8:
            raise ShanshuiError(f"size {s} is not a positive multiple of 8; try {max(8, round(s / 8) * 8)}")
    return list(dict.fromkeys(sizes))


def _short_hash(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]


def resolve_model(text: str) -> ModelRef:
    """`default`, an architecture name (`tiny`, `sd15`: random weights made into the cache), a diffusers folder, or
    an export folder (its ONNX rows use it as is; PyTorch rows use its recorded source folder when that exists).
    An existing folder wins over an architecture name."""

    path = Path(text).expanduser()
    if text == "default" and not path.exists():

        src, onnx = models.default_source_path(), models.default_model_path()
        if src is None:
            raise ShanshuiError("no default model ships with this install yet; pass --model with a model folder, or --model sd15")
        shipped = read_manifest(onnx) if onnx is not None else None  # the shipped export is measured as it ships
        exports = {shipped["precision"]: onnx} if shipped else {}
        return ModelRef("default", "default", model_resolution(src), source=src, exports=exports)
    if not path.exists() and text in ARCHS:
        return ModelRef(text, f"{text}-seed0", int(ARCHS[text]["resolution"]), arch=text)
    if not path.is_dir():
        raise ShanshuiError(f"--model {text}: no such folder; pass a diffusers or export folder, `default`, or one of {', '.join(ARCHS)}")
    m = read_manifest(path)  # an export also has model_index.json and unet/: look at it first
    if m is not None:
        source = resolve_source_ref(m.get("source", {}).get("path"), path)
        name = source.name if source else path.name
        key = f"{name}-{_short_hash(source or path)}"
        return ModelRef(name, key, int(m["shapes"]["height"]), source=source, exports={m["precision"]: path})
    if (path / "model_index.json").is_file() and (path / "unet").is_dir():
        return ModelRef(path.name, f"{path.name}-{_short_hash(path)}", model_resolution(path), source=path)
    raise ShanshuiError(f"{path} is neither a diffusers folder nor a shanshui export; `shanshui init` or `shanshui export` makes one")


def resolve_models(texts: list[str]) -> list[ModelRef]:
    refs = [resolve_model(t) for t in texts or ["default"]]
    names = [r.name for r in refs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ShanshuiError(f"two models are both named {dup[0]!r}; rename one folder so their rows can be told apart")
    return refs


def devices_for(device: str, probe: dict) -> tuple[list[str], str | None]:
    """(devices to plan, why cuda is missing or None)."""
    has_cuda = probe.get("torch_cuda") or "CUDAExecutionProvider" in probe.get("providers", [])
    why = None if has_cuda else "no CUDA GPU is visible here (neither torch.cuda nor ONNX Runtime's CUDA provider)"
    if device == "cpu":
        return ["cpu"], why
    if device == "cuda":
        return ["cuda"], why
    return (["cpu", "cuda"] if has_cuda else ["cpu"]), why


def _unavailable(runner: str, backend: str, device: str, precision: str, model: ModelRef, probe: dict, optimum: dict,
                 cuda_why: str | None, sdcpp: dict | None = None) -> str | None:
    if device == "cuda" and cuda_why:
        return cuda_why
    if backend == "onnxruntime" and device == "cuda" and "CUDAExecutionProvider" not in probe.get("providers", []):
        return "ONNX Runtime has no CUDA provider here (pip install 'shanshui[gpu]')"
    if backend == "torch" and not probe.get("torch"):
        return "PyTorch is not installed (pip install 'shanshui[torch]')"
    if backend == "torch" and device == "cuda" and not probe.get("torch_cuda"):
        return "PyTorch sees no CUDA GPU"
    if runner == "shanshui" and backend == "torch" and precision == "int8" and not probe.get("bitsandbytes"):
        return "int8 in PyTorch needs bitsandbytes (pip install 'shanshui[bnb]')"
    if runner == "optimum":
        if not optimum.get("ready"):
            return optimum.get("reason") or "the Optimum venv is not ready"
        if device == "cuda":
            return "the Optimum venv has the CPU build of onnxruntime (no CUDA provider)"
    if runner == "sdcpp":
        if not (sdcpp or {}).get("ready"):
            return (sdcpp or {}).get("reason") or "the stable-diffusion.cpp venv is not ready"
        if device == "cuda":
            return "the stable-diffusion.cpp venv is built with the CPU backend only"
    if runner in ("diffusers", "sdcpp") or backend == "torch":
        if model.source is None and model.arch is None:
            return "no diffusers source folder for this export (its recorded source path is gone)"
    return None


def plan_rows(models: list[ModelRef], sizes: list[int] | None, backends: list[str], precisions: list[str], device: str,
              peers: list[str], probe: dict, optimum: dict, sdcpp: dict | None = None) -> list[Row]:
    """Every row to measure, in report order; rows that cannot run here come back with status 'skipped' and a reason.
    `optimum`, `sdcpp`: the peers' venvs (see bench/venv.py), whether ready or why not."""
    devices, cuda_why = devices_for(device, probe)
    rows: list[Row] = []
    for model in models:
        for size in sizes or [model.resolution]:
            for dev in devices:
                combos = [("shanshui", b) for b in backends] + [(p, PEER_BACKENDS[p]) for p in peers]
                for runner, backend in combos:
                    key = (runner if runner != "shanshui" else backend, dev)
                    if backend == "tensorrt" and dev == "cpu":
                        if "cuda" not in devices:  # say once why there is no TensorRT row
                            rows.append(Row(model.name, size, runner, backend, "cuda", "*", "skipped", cuda_why or "TensorRT needs an NVIDIA GPU"))
                        continue
                    if backend == "tensorrt" and not (probe.get("tensorrt") and probe.get("trt_backend")):
                        what = "the tensorrt package" if not probe.get("tensorrt") else "shanshui.runtime.trt_backend"
                        rows.append(Row(model.name, size, runner, backend, dev, "*", "skipped", f"{what} is not importable here"))
                        continue
                    precs = [p for p in precisions if p in SUPPORTED.get(key, ())]
                    if runner == "sdcpp":
                        precs = list(SUPPORTED.get(key, ()))  # its own weight types, whatever --precisions says
                    elif runner != "shanshui" and "fp32" not in precs:
                        precs.insert(0, "fp32")  # a peer always has its fp32 row: the baseline of ratios
                    for prec in precs:
                        row = Row(model.name, size, runner, backend, dev, prec)
                        why = _unavailable(runner, backend, dev, prec, model, probe, optimum, cuda_why, sdcpp)
                        if why is None and backend in ("onnxruntime", "tensorrt") and model.source is None \
                                and model.arch is None and prec not in model.exports:
                            why = f"no {prec} export given and no source folder to make one from"
                        if why:
                            row.status, row.reason = "skipped", why
                        rows.append(row)
    return _collapse_skipped(rows)


def _collapse_skipped(rows: list[Row]) -> list[Row]:
    """One skipped row per runner/backend/device and reason (precision '*'), not one per precision."""
    first: dict[tuple, Row] = {}
    out = []
    for r in rows:
        if r.status == "skipped":
            k = (r.model, r.size, r.runner, r.backend, r.device, r.reason)
            if k in first:
                first[k].precision = "*"
                continue
            first[k] = r
        out.append(r)
    return out
