"""Contact sheets of renders, for looking at what the procedural painter makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shanshui.data.render import render
from shanshui.data.scene import FORMATS, sample_scene


def contact_sheet(seeds: list[int], size: int = 256, cols: int = 8, gap: int = 4, mix_formats: bool = True) -> Image.Image:
    """Render `seeds` into one grid image (cols wide); mix_formats cycles square/tall/wide."""
    rows = (len(seeds) + cols - 1) // cols
    sheet = np.full((rows * (size + gap) + gap, cols * (size + gap) + gap, 3), 250, dtype=np.uint8)  # (H, W, 3)
    for i, seed in enumerate(seeds):
        scene = sample_scene(seed, FORMATS[i % 3] if mix_formats else None)
        r, c = divmod(i, cols)
        y, x = gap + r * (size + gap), gap + c * (size + gap)
        sheet[y : y + size, x : x + size] = render(scene, size)
    return Image.fromarray(sheet)


def save_contact_sheet(path: Path, seeds: list[int], size: int = 256, cols: int = 8) -> Path:
    """Render and save a contact sheet as a 256-colour PNG (a few MB less); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(seeds, size, cols)
    sheet.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    return path
