"""Writing generated images, atomically: PNG with AUTOMATIC1111-style `parameters` text (see shanshui.pngmeta), and
contact-sheet grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_path
from shanshui.pngmeta import png_info


def save_png(path: Path, image: np.ndarray, params: dict) -> Path:
    """Write an (H, W, 3) uint8 image with A1111 `parameters` text and a `shanshui` JSON chunk (UTF-8 iTXt)."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ShanshuiError(f"output {path} must end in .png")
    info = png_info(params)
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


def save_grid(images: list[np.ndarray], path: Path, cols: int = 4) -> Path:
    """Tile (H, W, 3) uint8 images into one PNG, written atomically."""
    from PIL import Image

    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return Path(path)
