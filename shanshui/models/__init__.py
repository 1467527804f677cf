"""The default model shipped inside the package: its ONNX export and its diffusers (safetensors) source."""

from __future__ import annotations

from pathlib import Path

DEFAULT_ONNX = Path(__file__).parent / "default" / "onnx"
DEFAULT_DIFFUSERS = Path(__file__).parent / "default" / "diffusers"


def default_model_path() -> Path | None:
    """The shipped export folder, or None when this build ships no model."""
    return DEFAULT_ONNX if (DEFAULT_ONNX / "shanshui_manifest.json").is_file() else None


def default_source_path() -> Path | None:
    """The shipped diffusers folder (what `shanshui export` exports by default), or None."""
    return DEFAULT_DIFFUSERS if (DEFAULT_DIFFUSERS / "model_index.json").is_file() else None
