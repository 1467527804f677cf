"""Mountains and mist: one peak is a ridge profile filled with graded ink (or mineral colour), a tapered brush
outline, cun texture strokes, moss dots and distant ridge trees; a mist band is a soft wavy paper-white band."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shanshui.data.brush import Canvas, Layer, brush, brush_many, curve, curves, fbm1d, lerp_color, smoothstep, streak_texture

PAPER = (234, 225, 204)
MIST = (241, 235, 220)
INK = (32, 30, 28)
HAZE = (150, 162, 176)
AZURE = (44, 100, 138)  # azurite blue
MALACHITE = (58, 138, 110)  # malachite green
OCHRE = (196, 148, 90)
PALE_BLUE = (160, 182, 196)


@dataclass(frozen=True)
class Peak:
    """One mountain shape in painting pixels; strength 1 = nearest and darkest, ~0.3 = far and pale."""

    cx: float
    base: float
    height: float
    hw: float  # half width at the base
    shape: str  # "steep", "rounded" or "bank" (flat foreground ground)
    strength: float
    fade_len: float  # how far above the base the ink fades into mist


class Skyline:
    """The highest ridge drawn so far per column, to place birds, moon and waterfalls against."""

    def __init__(self, w: int, h: int):
        self.y = np.full(w, float(h), dtype=np.float32)  # (w,)

    def add(self, x0: int, top: np.ndarray) -> None:
        """Merge a ridge profile top (n,) starting at column x0."""
        seg = self.y[x0 : x0 + len(top)]
        np.minimum(seg, top[: len(seg)], out=seg)

    def top(self, x: float) -> float:
        """The highest ridge y at column x."""
        return float(self.y[int(np.clip(x, 0, len(self.y) - 1))])


def _profile(shape: str, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalised height 0..1 over |t| in 0..1 (n,) for the peak shape, with a random silhouette family."""
    if shape == "steep":  # from needle spires (low p1) to broad-shouldered monumental peaks (high p1)
        return (1.0 - a ** rng.uniform(1.2, 2.8)) ** rng.uniform(1.4, 2.4)
    if shape == "rounded":
        return np.clip(np.cos(a * (np.pi / 2)), 0.0, 1.0) ** rng.uniform(0.8, 1.6)
    return (1.0 - a * a) ** 0.55


def mountain(cv: Canvas, lay: Layer, rng: np.random.Generator, pk: Peak, scene, k: float, sky: Skyline | None) -> np.ndarray:
    """Paint one peak onto the canvas now (it occludes what is behind) and return its ridge y per column (n,)."""
    w, h = cv.w, cv.h
    x0 = max(0, int(np.floor(pk.cx - pk.hw)))
    x1 = min(w, int(np.ceil(pk.cx + pk.hw)) + 1)
    n = max(x1 - x0, 0)
    if n < 3:
        return np.full(n, float(h), dtype=np.float32)
    xs = np.arange(x0, x1, dtype=np.float32)  # (n,)
    t = (xs - pk.cx) / pk.hw
    lean = rng.uniform(-0.3, 0.3)
    t2 = np.clip(t - lean * (1.0 - t * t), -1.0, 1.0)
    prof = _profile(pk.shape, np.abs(t2), rng)  # (n,)
    rough = {"steep": 0.22, "rounded": 0.14, "bank": 0.06}[pk.shape]
    noise = fbm1d(rng, n, ((max(pk.hw * 0.4, 3.0), 1.0), (max(pk.hw * 0.12, 2.0), 0.45), (2.5 * k, 0.1)))
    top = pk.base - pk.height * prof * (1.0 + rough * noise) - np.sqrt(prof) * noise * pk.height * 0.02
    top = np.minimum(top, pk.base).astype(np.float32)  # (n,)
    if sky is not None:
        sky.add(x0, top)
    y0 = max(0, int(np.floor(top.min())))
    y1 = min(h, int(np.ceil(pk.base)) + 1)
    if y1 - y0 < 2:
        return top
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]  # (rows, 1)
    d = ys - top[None, :]  # (rows, n) depth below the ridge
    inside = np.clip(d + 0.5, 0.0, 1.0)
    hgt = np.maximum(pk.base - top, 1.0)  # (n,)
    rel = np.maximum(d, 0.0) / hgt  # (rows, n): 0 at the ridge, 1 at the base
    fade = smoothstep(0.0, 1.0, (pk.base - ys) / max(pk.fade_len, 1.0))  # (rows, 1)
    tex_full = streak_texture()
    ri = (((ys[:, 0] - y0) / k) + rng.integers(0, 512)).astype(np.int64) % 512  # (rows,)
    ci = (((xs - x0) / k) + rng.integers(0, 512)).astype(np.int64) % 512  # (n,)
    tex = tex_full[ri[:, None], ci[None, :]]  # (rows, n)
    side_dark = 1.0 + 0.4 * np.clip(-t2 * 2.5, -1.0, 1.0)  # (n,) left flanks darker
    s = pk.strength
    winter = scene.season == "winter"
    blue_green = scene.style == "blue_green"

    body = _wash(pk, rel, tex, side_dark, winter)
    body *= (0.5 if blue_green else 1.0) * s**0.8 * fade * inside  # (rows, n)

    slope = np.gradient(top)  # (n,)
    lw = (0.9 + 1.5 * s) * k
    wc = lw * (0.75 + 0.35 * fbm1d(rng, n, ((6 * k, 1.0),))) * np.sqrt(1.0 + slope * slope)
    wc = np.clip(wc * np.clip((1.0 - np.abs(t)) * 6.0, 0.3, 1.0), 0.6, 5 * lw)  # (n,) thinner at the ends
    edge = np.clip(wc[None, :] - d, 0.0, 1.0) * inside * fade  # (rows, n)
    ink_a = np.maximum(body, edge * (0.25 + 0.7 * s))

    strokes = _strokes(rng, pk, xs, top, hgt, t2, y0, y1 - y0, k, winter)  # (rows, n) 0..1
    ink_a = np.maximum(ink_a, strokes * fade * inside * (0.2 + 0.75 * s))

    occ = inside * smoothstep(0.0, 1.0, (pk.base - ys) / max(pk.fade_len * 0.6, 1.0))  # (rows, n)
    cv.paint(occ, PAPER, y0, x0)  # occlude what lies behind; the foot dissolves into what is there (mist)
    if blue_green:
        cv.paint(*_blue_green(rng, pk, rel, tex, inside * fade, winter), y0, x0)
    cv.paint(ink_a, lerp_color(INK, HAZE, (1.0 - s) * 0.85), y0, x0)
    return top


def _wash(pk: Peak, rel: np.ndarray, tex: np.ndarray, side_dark: np.ndarray, winter: bool) -> np.ndarray:
    """The ink wash of the mountain's body (rows, n), before strength, fade and coverage."""
    if winter:  # snow: ridges and upper slopes left blank, ink gathers lower down
        body = (0.03 + 0.3 * smoothstep(0.1, 0.65, rel)) * tex * side_dark
    else:
        body = (0.06 + 0.34 * np.exp(-rel * 3.0)) * tex * side_dark
    if pk.shape == "bank":
        body *= 0.55
    return body


def _blue_green(rng, pk: Peak, rel: np.ndarray, tex: np.ndarray, cover: np.ndarray, winter: bool):
    """Mineral colour of the blue-green style: azure/malachite above, ochre below; (alpha (rows, n), colour (rows, n, 3))."""
    s = pk.strength
    c_top = lerp_color(AZURE, MALACHITE, float(rng.random()))
    c_top = lerp_color(c_top, PALE_BLUE, (1.0 - s) * 0.9)
    low = lerp_color(OCHRE, PALE_BLUE, (1.0 - s) * 0.9)
    if pk.shape == "bank":
        c_top = lerp_color(MALACHITE, OCHRE, 0.35)
    mix = smoothstep(0.2, 0.75, rel + 0.2 * (tex - 1.0))[..., None]  # (rows, n, 1)
    col = np.asarray(c_top, np.float32) + mix * (np.asarray(low, np.float32) - np.asarray(c_top, np.float32))
    col_a = cover * (0.5 + 0.35 * s) * (0.75 + 0.25 * tex)
    if winter:
        col_a *= smoothstep(0.08, 0.4, rel) * 0.7
    return col_a, col


def _strokes(rng, pk: Peak, xs, top, hgt, t2, y0: int, rows: int, k: float, winter: bool) -> np.ndarray:
    """Fold lines, cun texture strokes, moss dots and tiny ridge trees as a (rows, n) coverage in 0..1."""
    n = len(xs)
    x0 = xs[0]
    im = Image.new("L", (n, rows), 0)
    dr = ImageDraw.Draw(im)
    s = pk.strength
    area = float(hgt.sum()) * 0.5

    # folds: long contour strokes falling from ridge crests
    crest = np.nonzero((top[1:-1] <= top[:-2]) & (top[1:-1] <= top[2:]))[0] + 1
    if len(crest) == 0:
        crest = np.array([int(np.argmin(top))])
    n_f = int(min(len(crest), 1 + pk.hw / (18 * k), 7))
    for c in rng.choice(crest, size=n_f, replace=False):
        sx, sy = xs[c] - x0, top[c] - y0 + 0.5
        ln = hgt[c] * rng.uniform(0.25, 0.6)
        dx = (np.sign(t2[c]) * 0.35 + rng.uniform(-0.15, 0.15)) * ln
        brush(dr, curve(sx, sy, sx + dx, sy + ln, rng.uniform(-0.12, 0.12) * ln, n=6), 1.9 * k, 0.4 * k, 215)

    # inner contours: partial ridge lines dropped into the body, giving rock strata and sub-peaks
    for _ in range(int(min(2 + pk.hw / (30 * k), 6))):
        c0 = int(rng.integers(0, max(n - 4, 1)))
        c1 = int(min(n - 1, c0 + rng.integers(max(3, n // 6), max(4, n // 2))))
        idx = np.linspace(c0, c1, 7).astype(np.int64)
        drop = rng.uniform(0.12, 0.45) * hgt[idx] * np.sin(np.linspace(0.15, 2.9, 7)) ** 0.5
        pts = np.stack([xs[idx] - x0, top[idx] - y0 + drop + 1], axis=1)  # (7, 2)
        brush(dr, pts, 1.6 * k, 0.4 * k, 185)

    _cun(dr, rng, pk, xs - x0, top - y0, hgt, t2, area, k, winter)

    # moss dots along ridges of near hills; tiny trees on middle-distance ridges
    if s > 0.6:
        for c in rng.integers(0, n, int(n / (9 * k))).tolist():
            px, py = xs[c] - x0, top[c] - y0 + rng.uniform(0.3, 3.0) * k
            rd = rng.uniform(0.7, 1.4) * k
            dr.ellipse((px - rd, py - rd * 0.8, px + rd, py + rd * 0.8), fill=235)
    if 0.3 < s < 0.95 and pk.shape != "bank":
        for c in rng.integers(0, n, max(1, int(n / (28 * k)))).tolist():
            for j in range(int(rng.integers(3, 7))):
                cc = min(n - 1, c + int(j * 1.7 * k))
                px, py = xs[cc] - x0, top[cc] - y0 + 0.8 * k
                dr.line((px, py, px, py - rng.uniform(1.5, 3.8) * k), fill=210, width=max(1, int(k + 0.3)))

    if k >= 0.8:
        im = im.filter(ImageFilter.GaussianBlur(0.35 * k))
    return np.asarray(im, dtype=np.float32) * (1.0 / 255.0)  # (rows, n)


def _cun(dr, rng, pk: Peak, px, py, hgt, t2, area: float, k: float, winter: bool) -> None:
    """Cun texture strokes: axe-cut (steep) or hemp-fibre (rounded, banks), denser near the ridge. px, py: the ridge
    in the layer's own pixels (n,)."""
    n, s = len(px), pk.strength
    n_c = int(np.clip(area / ((90 if pk.shape == "steep" else 55) * k * k), 4, 150) * (0.35 + 0.65 * s))
    cols = rng.integers(0, n, n_c)
    r = rng.random(n_c) ** 1.5 * (0.55 if winter else 0.75) + (0.25 if winter else 0.0)
    if winter:
        n_c //= 2
    n_c = max(n_c, 1)
    cols, r = cols[:n_c], r[:n_c]
    ln = rng.uniform(0.5, 1.0, n_c) * (7 * k if pk.shape == "steep" else 11 * k)  # (n_c,)
    jit = rng.uniform(-0.2, 0.2, n_c)
    sgn = np.sign(t2[cols])
    p0 = np.stack([px[cols], py[cols] + r * hgt[cols] + 1], axis=1)  # (n_c, 2)
    if pk.shape == "steep":  # axe-cut: small bundles of parallel slanting strokes
        p1 = p0 + np.stack([(sgn * 0.7 + jit) * ln, ln], axis=1)
        for b in range(3):
            sel = (cols % 3) >= b
            off = np.stack([-sgn[sel] * b * 2.2 * k, np.full(int(sel.sum()), b * k)], axis=1)
            brush_many(dr, curves(p0[sel] + off, p1[sel] + off, jit[sel] * 2, 3), 2.0 * k, 0.4 * k, 185)
    else:  # hemp-fibre: longer, thinner, gently curving
        p1 = p0 + np.stack([(sgn * 0.3 + jit) * ln, ln], axis=1)
        brush_many(dr, curves(p0, p1, jit * 4, 4), 1.3 * k, 0.4 * k, 175)


def mist_band(cv: Canvas, rng: np.random.Generator, yc: float, th: float, amount: float, k: float,
              patchy: bool = False) -> None:
    """A soft horizontal band of mist centred near yc (px), th thick, wavy and uneven along x."""
    w, h = cv.w, cv.h
    wave = yc + fbm1d(rng, w, ((w * 0.25, 1.0), (w * 0.07, 0.4))) * th * 0.7  # (w,) wavy centre line
    y0 = max(0, int(wave.min() - 2.5 * th))
    y1 = min(h, int(wave.max() + 2.5 * th) + 1)
    if y1 - y0 < 2:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]  # (rows, 1)
    prof = np.exp(-(((ys - wave[None, :]) / th) ** 2))  # (rows, w)
    m = fbm1d(rng, w, ((w * 0.2, 1.0), (w * 0.05, 0.35)))
    mod = np.clip((0.25 + 0.9 * m) if patchy else (0.7 + 0.5 * m), 0.0, 1.0)  # (w,)
    cv.paint(amount * prof * mod[None, :], MIST, y0, 0)
