"""Which kind of model folder a path is: a shanshui (or Optimum) ONNX export, a TensorRT engine folder, or diffusers.

Torch-free: file names only. The runtime's `open_pipeline` picks a backend from the answer.
"""

from __future__ import annotations

from pathlib import Path

from shanshui import models
from shanshui.errors import ShanshuiError
from shanshui.spec.engine_manifest import ENGINE_MANIFEST
from shanshui.spec.foreign import is_foreign_onnx
from shanshui.spec.manifest import MANIFEST


def default_model_dir() -> Path:
    """The model shipped inside the package (its ONNX export)."""
    path = models.default_model_path()
    if path is None:
        raise ShanshuiError("no default model ships with this install yet; pass --model with an export or diffusers folder")
    return path


def folder_kind(root: Path) -> str:
    """'onnx', 'engines' or 'diffusers'."""
    if not root.is_dir():
        raise ShanshuiError(f"model folder {root} does not exist; pass an export folder or a diffusers folder")
    if (root / MANIFEST).is_file():
        return "onnx"
    if is_foreign_onnx(root):  # Optimum's ONNX layout, no manifest of ours
        return "onnx"
    if (root / ENGINE_MANIFEST).is_file():
        return "engines"
    if (root / "model_index.json").is_file() and (root / "unet").is_dir():
        return "diffusers"
    raise ShanshuiError(f"{root} is neither a shanshui export nor a diffusers folder; make one with `shanshui export` or `shanshui init`")
