"""Image-to-image: start sampling from a given picture (a photo or a rough sketch) instead of pure noise.

As diffusers' img2img pipelines do: with `steps` sampling steps and strength s, the first steps − int(steps·s) steps
are skipped; the picture's latents (VAE encoder, the distribution's mean × scaling_factor) get noise at the σ of the
first step kept, x = x0 + σ·ε in the variance-exploding space of schedules.py, and sampling runs the rest.
s → 0 keeps the picture (through the VAE round trip); s = 1 keeps only its faintest trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError

DEFAULT_STRENGTH = 0.6


def load_init_image(src, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 from a path or an array: scaled to cover height × width, then centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
            raise ShanshuiError(f"an init image array must be (H, W, 3) uint8, got {src.shape} {src.dtype}")
        im = Image.fromarray(src, "RGB")
    else:
        try:
            with Image.open(Path(src)) as f:
                im = f.convert("RGB")
        except FileNotFoundError:
            raise ShanshuiError(f"init image {src} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ShanshuiError(f"cannot read init image {src} ({e.__class__.__name__}); give a PNG or JPEG") from None
    scale = max(width / im.width, height / im.height)
    w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return np.asarray(im.crop((left, top, left + width, top + height)), dtype=np.uint8)


def init_name(src) -> str | None:
    """What the PNG metadata records of an init image: its file name, never its path."""
    if src is None:
        return None
    return "array" if isinstance(src, np.ndarray) else Path(src).name


def skipped_steps(steps: int, strength: float) -> int:
    """How many of the schedule's steps image-to-image skips (diffusers: steps − int(steps · strength))."""
    if not 0.0 < strength <= 1.0:
        raise ShanshuiError(f"strength must be in (0, 1], got {strength}; 0.6 keeps the layout and repaints the style")
    return steps - min(int(steps * strength), steps)


def encode(components, image: np.ndarray, scaling_factor: float) -> np.ndarray:
    """Latents x0 (1, C, h, w) float64 of an (H, W, 3) uint8 image."""
    if not getattr(components, "has_encoder", False):
        raise ShanshuiError("this model has no VAE encoder for --init-image: re-run `shanshui export` (exports now "
                            "include vae_encoder/), or use the ONNX Runtime or torch backend")
    x = (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]  # (1, 3, H, W) in [-1, 1]
    return components.vae_encoder(np.ascontiguousarray(x)).astype(np.float64) * scaling_factor


def start(components, image: np.ndarray, scaling_factor: float, sigmas: np.ndarray, skip: int, n: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x at σ = sigmas[skip], the σ schedule from there) for n images; with nothing left to sample, x = x0."""
    x0 = np.repeat(encode(components, image, scaling_factor), n, axis=0)
    rest = sigmas[skip:]
    noise = rng.standard_normal(x0.shape)
    if len(rest) == 1:  # strength → 0: no step runs; the picture through the VAE round trip
        return x0, np.array([0.0])
    return x0 + noise * rest[0], rest
