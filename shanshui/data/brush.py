"""Brush primitives for the procedural painter: a float canvas, 1-D noise, cached textures, tapered strokes.

Everything is vectorised NumPy or Pillow drawing; nothing loops over pixels in Python. Cached textures are made
from fixed seeds, so they are the same in every process and the renders stay byte-identical.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = tuple[float, float, float]


def lerp_color(a: Color, b: Color, t: float) -> Color:
    """Mix two RGB colours: t=0 gives a, t=1 gives b."""
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at e0 to 1 at e1, elementwise (any shape)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class Canvas:
    """An RGB float32 painting surface (H, W, 3) in 0..255 that layers are composited onto."""

    def __init__(self, w: int, h: int, paper: Color):
        self.w, self.h = w, h
        self.paper = np.asarray(paper, dtype=np.float32)  # (3,)
        self.rgb = np.empty((h, w, 3), dtype=np.float32)  # (H, W, 3)
        self.rgb[:] = self.paper

    def paint(self, alpha: np.ndarray, color, y0: int = 0, x0: int = 0) -> None:
        """Composite `color` ((3,) or (h, w, 3)) with coverage `alpha` (h, w) in 0..1 at (y0, x0), clipped."""
        h, w = alpha.shape
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, self.h), min(x0 + w, self.w)
        if ya >= yb or xa >= xb:
            return
        a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]  # (h', w', 1)
        c = np.asarray(color, dtype=np.float32)
        if c.ndim == 3:
            c = c[ya - y0 : yb - y0, xa - x0 : xb - x0]
        reg = self.rgb[ya:yb, xa:xb]  # (h', w', 3) view
        reg += a * (c - reg)


class Layer:
    """Pillow 'L' masks, one per (order, colour), drawn with ImageDraw and flushed onto a Canvas in order."""

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.masks: dict[tuple[int, Color], tuple[Image.Image, ImageDraw.ImageDraw]] = {}

    def pen(self, color: Color, order: int = 1) -> ImageDraw.ImageDraw:
        """An ImageDraw on the mask for `color`; fill values are coverage 0..255; lower `order` lands first."""
        key = (order, tuple(float(v) for v in color))
        if key not in self.masks:
            im = Image.new("L", (self.w, self.h), 0)
            self.masks[key] = (im, ImageDraw.Draw(im))
        return self.masks[key][1]

    def flush(self, canvas: Canvas, soften: float = 0.0) -> None:
        """Composite every mask onto `canvas` (lowest order first), optionally blurred a little, then clear."""
        for (_, color), (im, _) in sorted(self.masks.items(), key=lambda kv: kv[0][0]):
            box = im.getbbox()
            if box is None:
                continue
            pad = 2
            box = (max(box[0] - pad, 0), max(box[1] - pad, 0), min(box[2] + pad, self.w), min(box[3] + pad, self.h))
            crop = im.crop(box)
            if soften > 0:
                crop = crop.filter(ImageFilter.GaussianBlur(soften))
            alpha = np.asarray(crop, dtype=np.float32) * (1.0 / 255.0)  # (h, w)
            canvas.paint(alpha, color, box[1], box[0])
        self.masks.clear()


def fbm1d(rng: np.random.Generator, n: int, octaves: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Smooth 1-D noise of length n: sum over (period_px, amplitude) octaves of cosine-interpolated values."""
    x = np.arange(n, dtype=np.float32)  # (n,)
    out = np.zeros(n, dtype=np.float32)
    for period, amp in octaves:
        period = max(float(period), 1.0)
        ctrl = rng.standard_normal(int(n / period) + 3).astype(np.float32)  # (k,)
        f = x / period
        i = f.astype(np.int32)
        s = (1.0 - np.cos((f - i) * np.pi)) * 0.5
        out += amp * (ctrl[i] * (1.0 - s) + ctrl[i + 1] * s)
    return out


@functools.lru_cache(maxsize=4)
def streak_texture(n: int = 512) -> np.ndarray:
    """Cached (n, n) float32 texture around 1.0 of vertical fibre streaks (hemp-fibre cun), fixed seed."""
    rng = np.random.default_rng(20240601)
    coarse = rng.random((n // 10, n // 2)).astype(np.float32)  # (rows, cols): stretched vertically
    im = Image.fromarray((coarse * 255).astype(np.uint8)).resize((n, n), Image.BILINEAR)
    streak = np.asarray(im, dtype=np.float32) / 255.0  # (n, n)
    blot = rng.random((n // 32, n // 32)).astype(np.float32)
    blot = np.asarray(Image.fromarray((blot * 255).astype(np.uint8)).resize((n, n), Image.BICUBIC), np.float32) / 255
    tex = 0.55 + 0.6 * streak * 0.6 + 0.55 * blot  # streaks over blotchy wash
    tex.flags.writeable = False
    return tex


@functools.lru_cache(maxsize=8)
def paper_texture(w: int, h: int) -> np.ndarray:
    """Cached (h, w, 1) float32 multiplier near 1.0: grain, faint fibres and a darker aged rim; fixed seed."""
    rng = np.random.default_rng(7031)
    grain = rng.standard_normal((h, w)).astype(np.float32) * 0.012  # (h, w)
    cloud = rng.random((max(h // 24, 2), max(w // 24, 2))).astype(np.float32)
    cloud = np.asarray(Image.fromarray((cloud * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    fib = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(fib)
    for _ in range(int(w * h / 900)):
        x, y = rng.random(2) * (w, h)
        a = rng.random() * np.pi
        ln = 4 + rng.random() * 14
        d.line((x, y, x + np.cos(a) * ln, y + np.sin(a) * ln), fill=int(40 + rng.random() * 60), width=1)
    fibres = np.asarray(fib, dtype=np.float32) / 255.0 * 0.035
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]  # (h, 1)
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]  # (1, w)
    rim = 1.0 - 0.07 * np.clip(np.maximum(np.abs(yy), np.abs(xx)) ** 6, 0, 1)  # (h, w) aged edges
    tex = (1.0 + grain - fibres + (cloud / 255.0 - 0.5) * 0.04) * rim
    tex = tex[:, :, None].astype(np.float32)  # (h, w, 1)
    tex.flags.writeable = False
    return tex


@functools.lru_cache(maxsize=32)
def _taper(n: int) -> tuple[tuple[float, float], ...]:
    """Per point (t, width factor) for an n-point stroke: blunt start, thin tip."""
    ts = [i / (n - 1) for i in range(n)]
    return tuple((t, math.sin(math.pi * (0.15 + 0.85 * t)) ** 0.3) for t in ts)


def brush(draw: ImageDraw.ImageDraw, pts, w0: float, w1: float, fill: int) -> None:
    """Draw one tapered stroke along pts ((n, 2) array or list of (x, y)) from width w0 to w1."""
    if isinstance(pts, np.ndarray):
        pts = pts.tolist()
    if max(w0, w1) < 1.3:
        draw.line([tuple(p) for p in pts], fill=fill, width=1)
        return
    n = len(pts)
    left, right = [], []
    for i, ((x, y), (t, f)) in enumerate(zip(pts, _taper(n))):
        a, b = pts[max(i - 1, 0)], pts[min(i + 1, n - 1)]
        dx, dy = b[0] - a[0], b[1] - a[1]
        ln = math.hypot(dx, dy) or 1e-6
        half = (w0 + (w1 - w0) * t) * 0.5 * f / ln
        left.append((x - dy * half, y + dx * half))
        right.append((x + dy * half, y - dx * half))
    draw.polygon(left + right[::-1], fill=fill)


def curve(x0: float, y0: float, x1: float, y1: float, bend: float, n: int = 6) -> list[tuple[float, float]]:
    """n points on a gentle arc from (x0, y0) to (x1, y1); bend is the sideways bulge in px."""
    dx, dy = x1 - x0, y1 - y0
    ln = math.hypot(dx, dy) or 1e-6
    nx, ny = -dy / ln * bend, dx / ln * bend
    out = []
    for t, _ in _taper(n):
        b = math.sin(math.pi * t)
        out.append((x0 + dx * t + nx * b, y0 + dy * t + ny * b))
    return out


def curves(p0: np.ndarray, p1: np.ndarray, bend: np.ndarray, n: int) -> np.ndarray:
    """Many arcs at once: from p0 (N, 2) to p1 (N, 2) bulging by bend (N,), as points (N, n, 2)."""
    t = np.linspace(0.0, 1.0, n)[None, :, None]  # (1, n, 1)
    d = p1 - p0  # (N, 2)
    ln = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) / ln[:, None] * bend[:, None]  # (N, 2)
    return p0[:, None, :] + t * d[:, None, :] + np.sin(np.pi * t) * normal[:, None, :]


def brush_many(draw: ImageDraw.ImageDraw, pts: np.ndarray, w0: float, w1: float, fill: int) -> None:
    """Draw N tapered strokes along pts (N, n, 2) at once (polygons computed in one vectorised pass)."""
    if len(pts) == 0:
        return
    n = pts.shape[1]
    if max(w0, w1) < 1.3:
        for line in pts.reshape(len(pts), -1).tolist():
            draw.line(line, fill=fill, width=1)
        return
    d = np.empty_like(pts)  # (N, n, 2) tangents by neighbour differences
    d[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    d[:, 0] = pts[:, 1] - pts[:, 0]
    d[:, -1] = pts[:, -1] - pts[:, -2]
    d /= np.maximum(np.hypot(d[..., 0], d[..., 1]), 1e-6)[..., None]
    normal = np.stack([-d[..., 1], d[..., 0]], axis=-1)  # (N, n, 2)
    taper = np.array(_taper(n))  # (n, 2)
    half = ((w0 + (w1 - w0) * taper[:, 0]) * 0.5 * taper[:, 1])[None, :, None]  # (1, n, 1)
    poly = np.concatenate([pts + normal * half, (pts - normal * half)[:, ::-1]], axis=1)  # (N, 2n, 2)
    for flat in poly.reshape(len(pts), -1).tolist():
        draw.polygon(flat, fill=fill)
