"""What to build: shape buckets, TensorRT optimisation profiles from the export contract, precision modes, cache keys.

Pure Python (no tensorrt, no torch): every decision here is tested on machines without a GPU.

A bucket NxHxW is N images of H×W pixels per call. For one bucket the components see
    text_encoder  input_ids (2N, L)                      # prompt and negative prompt
    unet          sample (2N, C, h, w), timestep (2N,), encoder_hidden_states (2N, L, D)   # h, w = H/8, W/8
    vae_decoder   latent_sample (N, C, h, w)
A static profile has min = opt = max; a call with a smaller batch (e.g. guidance 1) is padded to the bucket's.
A dynamic profile spans the export's min/max ranges (ShapeSettings.dim_ranges), optimised for the first bucket.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shanshui.errors import ShanshuiError
from shanshui.spec.contract import ComponentSpec, ModelDims, Precision, ShapeSettings, check_choice, check_size

TRT_ALTERNATIVE = "or use --backend onnxruntime --device cuda"  # ends every TensorRT error: what works without it
BUILD_VERSION = 1  # bump when build settings change: every cached engine is rebuilt
Profile = dict[str, list[list[int]]]  # input name -> [min, opt, max] shapes (lists: JSON round-trips them unchanged)


@dataclass(frozen=True)
class Bucket:
    batch: int  # images per call
    height: int  # pixels
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"

    def values(self, dims: ModelDims) -> dict[str, int]:
        """The value of every symbolic dim of the contract at this bucket."""
        s = dims.vae_scale
        return {"B2": 2 * self.batch, "B": self.batch, "H": self.height, "W": self.width,
                "h": self.height // s, "w": self.width // s}


def default_bucket(shapes: ShapeSettings) -> Bucket:
    """One image at the size the model was exported for."""
    return Bucket(1, shapes.height, shapes.width)


def check_bucket(b: Bucket, dims: ModelDims, shapes: ShapeSettings) -> None:
    if not 1 <= b.batch <= shapes.max_batch:
        raise ShanshuiError(f"--shapes {b}: images per call must be 1..{shapes.max_batch} for this export; "
                            f"re-export with a larger --max-batch")
    for name, v in (("height", b.height), ("width", b.width)):
        check_size(name, v, dims.size_multiple, shapes.min_size, shapes.max_size, prefix=f"--shapes {b}: ")


def parse_buckets(text: str | None, dims: ModelDims, shapes: ShapeSettings) -> list[Bucket]:
    """`1x256x256,2x256x256` -> buckets, checked against the export; none given -> the default bucket."""
    if text is None or not text.strip():
        return [default_bucket(shapes)]
    out: list[Bucket] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*[xX×]\s*(\d+)\s*", part)
        if not m:
            raise ShanshuiError(f"--shapes: {part.strip()!r} is not NxHxW (images × height × width), "
                                f"e.g. 1x{shapes.height}x{shapes.width},2x{shapes.height}x{shapes.width}")
        b = Bucket(*(int(g) for g in m.groups()))
        check_bucket(b, dims, shapes)
        if b not in out:
            out.append(b)
    return out


def _ordered(buckets: list[Bucket]) -> list[Bucket]:
    """Static buckets in one canonical order, so that `2x256x256,1x256x256` is the same build as the reverse."""
    return sorted(buckets, key=lambda b: (b.batch, b.height, b.width))


def shapes_label(buckets: list[Bucket], dynamic: bool) -> str:
    return f"dynamic (opt {buckets[0]})" if dynamic else ",".join(str(b) for b in _ordered(buckets))


def profiles(spec: ComponentSpec, dims: ModelDims, shapes: ShapeSettings, buckets: list[Bucket], dynamic: bool) -> list[Profile]:
    """The optimisation profiles of one component: one static profile per distinct shape, or one dynamic profile."""
    if dynamic:
        full = spec.profile(dims, shapes)  # the contract's min/opt/max
        opt = buckets[0].values(dims)
        return [{t.name: [list(full[t.name][0]), list(spec.shape_of(t, opt)), list(full[t.name][2])] for t in spec.inputs}]
    out: list[Profile] = []
    for b in _ordered(buckets):
        values = b.values(dims)
        p = {t.name: [list(spec.shape_of(t, values))] * 3 for t in spec.inputs}
        if p not in out:  # the text encoder sees only the batch: 1x256x256 and 1x512x512 share a profile
            out.append(p)
    return out


def is_static(p: Profile) -> bool:
    return all(mn == mx for mn, _, mx in p.values())


def choose_profile(profs: list[Profile], shapes: dict[str, tuple[int, ...]]) -> tuple[int, dict[str, tuple[int, ...]]] | None:
    """(profile index, shapes to run at) for a call's input shapes, or None when no profile fits.

    A profile whose ranges hold the shapes is used as is; otherwise the static profile with the same trailing dims
    and the smallest larger batch, the inputs padded along dim 0.
    """
    def inside(p: Profile) -> bool:
        return all(len(s) == len(p[n][0]) and all(lo <= v <= hi for v, lo, hi in zip(s, p[n][0], p[n][2]))
                   for n, s in shapes.items())

    for i, p in enumerate(profs):
        if inside(p):
            return i, dict(shapes)
    padded = []
    for i, p in enumerate(profs):
        if is_static(p) and all(len(s) == len(p[n][0]) and tuple(p[n][0][1:]) == tuple(s[1:]) and p[n][0][0] >= s[0]
                                for n, s in shapes.items()):
            padded.append((p[next(iter(shapes))][0][0], i))
    if not padded:
        return None
    _, i = min(padded)
    return i, {n: tuple(profs[i][n][0]) for n in shapes}


def network_mode(engine_precision: str, export_precision: str, graph_precision: str, trt_major: int) -> dict:
    """How TensorRT builds one component's ONNX graph.

    strongly_typed: the network keeps the graph's own types (fp16 export, int8 QDQ export, or exact fp32).
    fp16_flag: TensorRT 10 may pick fp16 kernels inside an fp32 graph (BuilderFlag.FP16; removed in TensorRT 11).
    tf32: TF32 matmuls/convs allowed (cleared for fp32 engines, which serve as the exact reference).
    """
    check_choice("precision", engine_precision, Precision)
    if engine_precision == "fp32":
        if export_precision != "fp32":
            raise ShanshuiError(f"this is an {export_precision} export: build --precision {export_precision}, "
                                f"or build fp32 from an fp32 export")
        return {"graph": "fp32", "strongly_typed": True, "fp16_flag": False, "tf32": False}
    if engine_precision == "int8" and export_precision != "int8":
        raise ShanshuiError("int8 engines are built from an int8 (QDQ) export: run `shanshui export MODEL OUT --precision int8` "
                            "and build from OUT (TensorRT does no calibration here), or use --precision fp16")
    if engine_precision == "fp16" and export_precision == "int8":
        raise ShanshuiError("this is an int8 export: build --precision int8, or build fp16 from its fp32 export (OUT/.fp32)")
    if graph_precision in ("fp16", "int8"):
        return {"graph": graph_precision, "strongly_typed": True, "fp16_flag": False, "tf32": True}
    if trt_major < 11:  # an fp32 graph (fp32 export, or a component a lower-precision export kept in fp32)
        return {"graph": "fp32", "strongly_typed": False, "fp16_flag": True, "tf32": True}
    if export_precision == "fp32":
        raise ShanshuiError("TensorRT 11 builds fp16 engines only from an fp16 export: run `shanshui export MODEL OUT "
                            "--precision fp16` and build from OUT, or use --precision fp32")
    return {"graph": "fp32", "strongly_typed": True, "fp16_flag": False, "tf32": True}


def engine_key(component: str, onnx_sha256: str, precision: str, mode: dict, profs: list[Profile], env: dict) -> dict:
    """Everything an engine depends on; a different key means a different engine file. (Only the profiles, not the
    bucket list, count: the text encoder of 1x256x256 and of 1x256x256,1x512x512 is the same engine.)"""
    return {"build_version": BUILD_VERSION, "component": component, "onnx_sha256": onnx_sha256, "precision": precision,
            "mode": mode, "profiles": profs, "tensorrt": env["tensorrt"], "gpu": env["gpu"]}


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def gpu_label(gpu: dict | None) -> str:
    if not gpu:
        return "unknown GPU"
    return f"{gpu.get('name', '?')} (sm_{str(gpu.get('compute_capability', '?')).replace('.', '')})"


def describe_change(old: dict | None, new: dict, old_shapes: str | None = None, new_shapes: str | None = None) -> str:
    """Why an engine with key `old` does not serve key `new`, in words (shape labels as shapes_label gives them)."""
    if not old:
        return "not built yet"
    reasons = []
    if old.get("onnx_sha256") != new["onnx_sha256"]:
        reasons.append("the ONNX model changed")
    if old.get("precision") != new["precision"]:
        reasons.append(f"precision {old.get('precision')} → {new['precision']}")
    elif old.get("mode") != new["mode"]:
        reasons.append("build mode changed")
    if old.get("profiles") != new["profiles"]:
        reasons.append(f"shapes {old_shapes} → {new_shapes}" if old_shapes and new_shapes else "shape profiles changed")
    if old.get("tensorrt") != new["tensorrt"]:
        reasons.append(f"TensorRT {old.get('tensorrt')} → {new['tensorrt']}")
    if old.get("gpu") != new["gpu"]:
        reasons.append(f"GPU {gpu_label(old.get('gpu'))} → {gpu_label(new['gpu'])}")
    if old.get("build_version") != new["build_version"]:
        reasons.append("shanshui's build settings changed")
    return "; ".join(reasons) or "its cache key changed"


@dataclass(frozen=True)
class EngineBuild:
    """What trt.build_engine needs for one component."""

    component: str
    onnx_path: Path
    profiles: list  # [{input name: [min, opt, max]}]
    mode: dict  # network_mode
    workspace_bytes: int | None = None


Builder = Callable[[Path, EngineBuild, Path], bytes]  # (onnx path, what to build, timing cache file) -> serialized engine
