"""Writing generated images: PNG with the prompt and parameters in a text chunk, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_path


def save_png(path: Path, image: np.ndarray, params: dict) -> Path:
    """Write an (H, W, 3) uint8 image; `parameters` (JSON) and `prompt` go in UTF-8 iTXt chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ShanshuiError(f"output {path} must end in .png")
    info = PngInfo()
    info.add_itxt("prompt", str(params.get("prompt", "")))
    info.add_itxt("parameters", json.dumps(params, ensure_ascii=False, sort_keys=True))
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(image, "RGB").save(tmp, format="PNG", pnginfo=info)
    except OSError as e:
        raise ShanshuiError(f"cannot write {path}: {e.strerror or e}; choose a writable location") from None
    return path


def numbered(path: Path, i: int, n: int) -> Path:
    """out.png for a single image; out-0.png, out-1.png … for several."""
    path = Path(path)
    return path if n == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")
