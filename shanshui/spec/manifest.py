"""The export manifest (shanshui_manifest.json): what each ONNX file is, for the runtime and engine builds.

Torch-free: the runtime reads it to learn dims, tokenizer settings and the VAE scaling factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.integrity import check_manifest, inside, loads_strict, verify_component
from shanshui.spec.contract import COMPONENTS, ModelDims, ShapeSettings
from shanshui.spec.foreign import foreign_manifest, is_foreign_onnx

MANIFEST = "shanshui_manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportedModel:
    root: Path
    manifest: dict

    @property
    def dims(self) -> ModelDims:
        return ModelDims(**self.manifest["dims"])

    @property
    def shapes(self) -> ShapeSettings:
        return ShapeSettings(**self.manifest["shapes"])

    def onnx_path(self, component: str) -> Path:
        entry = self.manifest["components"].get(component)
        if entry is None:
            raise ShanshuiError(f"{self.root} has no exported {component}; re-run `shanshui export`")
        return inside(self.root, entry["file"], f"{component} file")


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    m = loads_strict(path.read_bytes(), str(path))
    if isinstance(m, dict) and m.get("format_version") != FORMAT_VERSION:
        raise ShanshuiError(f"{path} has format {m.get('format_version')}, this shanshui reads {FORMAT_VERSION}; re-export")
    return check_manifest(m, path)


def open_exported(root: Path) -> ExportedModel:
    """An export folder made by `shanshui export` (or another exporter's ONNX folder), with all three components."""
    root = Path(root)
    m = read_manifest(root)
    if m is None:
        if is_foreign_onnx(root):  # e.g. Optimum's export: a manifest from the folder's own configs
            m = {"format_version": FORMAT_VERSION, **foreign_manifest(root)}
    if m is None:
        raise ShanshuiError(f"{root} is not a shanshui export (no {MANIFEST}); run `shanshui export` on a model folder")
    model = ExportedModel(root, m)
    for comp in COMPONENTS:
        if not model.onnx_path(comp).is_file():
            raise ShanshuiError(f"{model.onnx_path(comp)} is missing; re-run `shanshui export` to complete the folder")
    for comp, entry in m["components"].items():  # sizes and sha256 as the export recorded them
        verify_component(root, comp, entry)
    return model
