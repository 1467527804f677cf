"""Small brush motifs drawn onto a `Layer`: trees, rocks, buildings, boats, birds, inscription and seal.

Each motif takes a base point in pixels, a size in pixels and a `strength` (1 = near, darker; smaller = farther,
paler). Mask order: 0 = paper clearing (hides what is behind), 1 = colour washes, 2 = ink lines and dots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shanshui.data.brush import Color, Layer, brush, curve


@dataclass(frozen=True)
class Palette:
    """The colours one painting uses (RGB 0..255)."""

    paper: Color
    ink: Color
    pine: Color  # pine needle clusters
    leaf: Color  # leafy foliage wash
    leaf_dots: Color  # foliage dots
    blossom: Color | None  # spring blossoms or autumn second colour
    willow: Color
    roof: Color
    seal: Color = (176, 38, 32)


def _a(strength: float, base: float = 255.0) -> int:
    return int(max(0.0, min(1.0, strength)) * base)


def pine(layer: Layer, rng: np.random.Generator, x: float, y: float, h: float, pal: Palette, strength: float) -> None:
    """A pine: leaning tapered trunk, side branches, flat layered needle clusters with inked tops."""
    ink, needles, wash = layer.pen(pal.ink, 2), layer.pen(pal.ink, 3), layer.pen(pal.pine, 1)
    lean = rng.uniform(-0.3, 0.3) * h
    tw = max(1.0, h * 0.055)
    trunk = curve(x, y, x + lean, y - h, rng.uniform(-0.12, 0.12) * h, n=7)  # 7 points (x, y)
    brush(ink, trunk, tw * 1.4, tw * 0.5, _a(strength, 235))
    levels = int(rng.integers(3, 6))
    side = 1.0 if rng.random() < 0.5 else -1.0
    for j in range(levels):
        f = 0.45 + 0.55 * j / max(levels - 1, 1)  # height fraction along the trunk
        px, py = trunk[0][0] + (trunk[-1][0] - trunk[0][0]) * f, trunk[0][1] + (trunk[-1][1] - trunk[0][1]) * f
        ln = h * (0.42 - 0.26 * f) * rng.uniform(0.7, 1.2)
        ex, ey = px + side * ln, py - rng.uniform(-0.05, 0.12) * h
        if j < levels - 1:
            brush(ink, curve(px, py, ex, ey, rng.uniform(-2, 2), n=4), tw * 0.7, tw * 0.35, _a(strength, 225))
        cx, cy = (ex, ey) if j < levels - 1 else (px, py - h * 0.03)
        cw = ln * 0.8 + h * 0.12
        ch = max(cw * 0.28, 1.5)
        wash.ellipse((cx - cw * 0.6, cy - ch * 0.7, cx + cw * 0.6, cy + ch * 0.45), fill=_a(strength, 235))
        needles.arc((cx - cw * 0.6, cy - ch * 0.75, cx + cw * 0.6, cy + ch * 0.9), 190, 350, fill=_a(strength, 240), width=1)
        for k in range(max(2, int(cw / 3))):  # needle ticks hanging under the cluster
            nx = cx - cw * 0.5 + cw * (k + 0.5) / max(2, int(cw / 3))
            needles.line((nx, cy - ch * 0.2, nx + rng.uniform(-0.8, 0.8), cy + ch * 0.55), fill=_a(strength, 200))
        side = -side


def leafy(layer: Layer, rng: np.random.Generator, x: float, y: float, h: float, pal: Palette, strength: float) -> None:
    """A broadleaf tree: forked trunk and a crown of dotted foliage over a pale colour wash."""
    ink, wash, dots = layer.pen(pal.ink, 2), layer.pen(pal.leaf, 1), layer.pen(pal.leaf_dots, 2)
    extra = layer.pen(pal.blossom, 3) if pal.blossom else None
    tw = max(1.0, h * 0.05)
    lean = rng.uniform(-0.15, 0.15) * h
    top = (x + lean, y - h * 0.62)
    brush(ink, curve(x, y, top[0], top[1], rng.uniform(-0.06, 0.06) * h, n=6), tw * 1.4, tw * 0.6, _a(strength, 230))
    r = h * rng.uniform(0.28, 0.38)
    centers = [(top[0] + rng.uniform(-0.9, 0.9) * r, top[1] - rng.uniform(0.0, 0.7) * r) for _ in range(3)]
    for cx, cy in centers:
        brush(ink, curve(top[0], top[1], cx, cy, rng.uniform(-1, 1), n=3), tw * 0.7, tw * 0.3, _a(strength, 220))
        rr = r * rng.uniform(0.55, 0.8)
        wash.ellipse((cx - rr, cy - rr * 0.8, cx + rr, cy + rr * 0.8), fill=_a(strength, 150))
    n = int(25 + h * 1.6)
    pts = np.array(centers)[rng.integers(0, 3, n)] + rng.standard_normal((n, 2)) * (r * 0.45, r * 0.35)  # (n, 2)
    dr = max(0.8, h * 0.016)
    kinds = rng.random(n)
    for (px, py), k in zip(pts.tolist(), kinds.tolist()):
        pen = extra if (extra is not None and k < 0.35) else dots
        pen.ellipse((px - dr, py - dr * 0.8, px + dr, py + dr * 0.8), fill=_a(strength, 230))


def bare(layer: Layer, rng: np.random.Generator, x: float, y: float, h: float, pal: Palette, strength: float) -> None:
    """A bare winter tree: recursively forking tapered branches (crab-claw twigs)."""
    ink = layer.pen(pal.ink, 2)
    stack = [(x, y, -np.pi / 2 + rng.uniform(-0.2, 0.2), h * 0.42, max(1.0, h * 0.05), 0)]
    while stack:
        bx, by, ang, ln, w, depth = stack.pop()
        ex, ey = bx + np.cos(ang) * ln, by + np.sin(ang) * ln
        pts = curve(bx, by, ex, ey, rng.uniform(-0.15, 0.15) * ln, n=4)
        brush(ink, pts, w * 1.2, w * 0.6, _a(strength, 225 - depth * 15))
        if depth < 4:
            for k in range(2 if depth < 3 else int(rng.integers(2, 4))):
                spread = rng.uniform(0.25, 0.7) * (1 if k % 2 == 0 else -1)
                stack.append((ex, ey, ang + spread, ln * rng.uniform(0.55, 0.75), w * 0.62, depth + 1))


def willow(layer: Layer, rng: np.random.Generator, x: float, y: float, h: float, pal: Palette, strength: float) -> None:
    """A willow: short gnarled trunk and long drooping strands."""
    ink, strand = layer.pen(pal.ink, 2), layer.pen(pal.willow, 2)
    tw = max(1.2, h * 0.07)
    top = (x + rng.uniform(-0.1, 0.1) * h, y - h * 0.55)
    brush(ink, curve(x, y, top[0], top[1], rng.uniform(-0.1, 0.1) * h, n=6), tw * 1.3, tw * 0.7, _a(strength, 235))
    for _ in range(int(14 + h * 0.3)):
        sx = top[0] + rng.uniform(-0.35, 0.35) * h
        sy = top[1] - rng.uniform(0.0, 0.3) * h
        ln = h * rng.uniform(0.35, 0.7)
        dx = rng.uniform(-0.12, 0.12) * h
        strand.line(curve(sx, sy, sx + dx, sy + ln, rng.uniform(-0.1, 0.1) * h + dx, n=5), fill=_a(strength, 200), width=1)
    for _ in range(4):
        bx = top[0] + rng.uniform(-0.3, 0.3) * h
        ink.line((top[0], top[1], bx, top[1] - rng.uniform(0.05, 0.3) * h), fill=_a(strength, 200), width=1)


TREE_DRAWERS = {"pine": pine, "leafy": leafy, "bare": bare, "willow": willow}


def rock(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, pal: Palette, strength: float) -> None:
    """A boulder: cleared silhouette, pale wash, tapered ink outline, a few texture strokes and moss dots."""
    clear, wash, ink = layer.pen(pal.paper, 0), layer.pen(pal.ink, 1), layer.pen(pal.ink, 2)
    ang = np.linspace(np.pi, 2 * np.pi, 9)  # upper half outline, left to right
    rad = s * (0.5 + 0.18 * rng.standard_normal(9))
    pts = np.stack([x + np.cos(ang) * s * 0.7, y + np.sin(ang) * rad * 1.1], axis=1)  # (9, 2)
    pts[:, 0] += rng.uniform(-0.08, 0.08, 9) * s
    poly = [tuple(p) for p in pts.tolist()] + [(x + s * 0.7, y + 1), (x - s * 0.7, y + 1)]
    clear.polygon(poly, fill=255)
    wash.polygon(poly, fill=_a(strength, 70))
    w = max(1.2, s * 0.09)
    brush(ink, pts, w * 1.3, w * 0.5, _a(strength, 235))
    for _ in range(int(rng.integers(2, 5))):
        sx = x + rng.uniform(-0.45, 0.45) * s
        sy = y - rng.uniform(0.1, 0.5) * s
        brush(ink, curve(sx, sy, sx + rng.uniform(-0.15, 0.15) * s, sy + s * 0.3, rng.uniform(-1, 1), n=4),
              w, w * 0.3, _a(strength, 190))
    for px, py in pts[1:-1:2].tolist():
        ink.ellipse((px - w * 0.7, py - w * 0.6, px + w * 0.7, py + w * 0.6), fill=_a(strength, 240))


def pavilion(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, pal: Palette, strength: float) -> None:
    """An open pavilion (亭): platform, pillars and a pointed roof with upturned eaves."""
    clear, roof, ink = layer.pen(pal.paper, 0), layer.pen(pal.roof, 1), layer.pen(pal.ink, 2)
    shape = np.array([(-0.8, -0.66), (-0.45, -0.74), (-0.15, -0.9), (0, -1.02), (0.15, -0.9), (0.45, -0.74),
                      (0.8, -0.66), (0.5, -0.6), (-0.5, -0.6)])  # (9, 2) roof outline in units of s
    poly = [(x + px * s, y + py * s) for px, py in shape.tolist()]
    clear.rectangle((x - 0.5 * s, y - 0.62 * s, x + 0.5 * s, y), fill=255)
    clear.polygon(poly, fill=255)
    roof.polygon(poly, fill=_a(strength, 230))
    ink.line(poly + [poly[0]], fill=_a(strength, 240), width=1)
    for px in (-0.36, 0.36, 0.0):
        ink.line((x + px * s, y - 0.6 * s, x + px * s, y - 0.08 * s), fill=_a(strength, 230 if px else 120),
                 width=max(1, int(s * 0.07)))
    ink.rectangle((x - 0.55 * s, y - 0.1 * s, x + 0.55 * s, y), outline=_a(strength, 235), width=1)
    ink.line((x, y - 1.02 * s, x, y - 1.15 * s), fill=_a(strength, 240), width=1)


def house(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, pal: Palette, strength: float) -> None:
    """A thatched/tiled cottage, sometimes with a smaller second one beside it."""
    clear, roof, ink = layer.pen(pal.paper, 0), layer.pen(pal.roof, 1), layer.pen(pal.ink, 2)
    units = [(x, s)] + ([(x + s * 0.95 * (1 if rng.random() < 0.5 else -1), s * 0.7)] if rng.random() < 0.6 else [])
    for hx, hs in units[::-1]:
        wall = (hx - 0.5 * hs, y - 0.42 * hs, hx + 0.5 * hs, y)
        rf = [(hx - 0.72 * hs, y - 0.38 * hs), (hx - 0.45 * hs, y - 0.78 * hs), (hx + 0.45 * hs, y - 0.78 * hs),
              (hx + 0.72 * hs, y - 0.38 * hs), (hx + 0.6 * hs, y - 0.44 * hs), (hx - 0.6 * hs, y - 0.44 * hs)]
        clear.rectangle(wall, fill=255)
        clear.polygon(rf, fill=255)
        roof.polygon(rf, fill=_a(strength, 220))
        ink.line(rf[:4], fill=_a(strength, 240), width=1)
        ink.rectangle(wall, outline=_a(strength, 230), width=1)
        ink.rectangle((hx - 0.12 * hs, y - 0.3 * hs, hx + 0.12 * hs, y), fill=_a(strength, 200))


def pagoda(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, pal: Palette, strength: float) -> None:
    """A multi-storey pagoda (塔): stacked tiers with flared eaves and a spire."""
    clear, roof, ink = layer.pen(pal.paper, 0), layer.pen(pal.roof, 1), layer.pen(pal.ink, 2)
    tiers = int(rng.integers(5, 8))
    th = s * 0.42
    cy = y
    for i in range(tiers):
        bw = s * (0.5 - 0.045 * i)
        clear.rectangle((x - bw / 2, cy - th, x + bw / 2, cy), fill=255)
        ink.line((x - bw / 2, cy, x - bw / 2, cy - th), fill=_a(strength, 220))
        ink.line((x + bw / 2, cy, x + bw / 2, cy - th), fill=_a(strength, 220))
        ew = bw * 0.85
        eave = [(x - ew, cy - th * 0.95), (x - bw * 0.5, cy - th * 1.1), (x + bw * 0.5, cy - th * 1.1),
                (x + ew, cy - th * 0.95), (x + bw * 0.55, cy - th * 0.82), (x - bw * 0.55, cy - th * 0.82)]
        roof.polygon(eave, fill=_a(strength, 230))
        ink.line(eave[:4], fill=_a(strength, 240), width=1)
        cy -= th
    ink.line((x, cy - th * 0.1, x, cy - th * 1.2), fill=_a(strength, 240), width=max(1, int(s * 0.06)))


BUILDING_DRAWERS = {"pavilion": pavilion, "house": house, "pagoda": pagoda}


def boat(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, pal: Palette, strength: float) -> None:
    """A small fishing boat with a seated figure in a conical hat, sometimes a rod or an awning."""
    clear, ink = layer.pen(pal.paper, 0), layer.pen(pal.ink, 2)
    d = 1.0 if rng.random() < 0.5 else -1.0
    hull = [(x - 0.6 * s * d, y - 0.2 * s), (x - 0.3 * s * d, y - 0.08 * s), (x + 0.3 * s * d, y - 0.08 * s),
            (x + 0.62 * s * d, y - 0.24 * s), (x + 0.4 * s * d, y + 0.02 * s), (x - 0.4 * s * d, y + 0.02 * s)]
    clear.polygon(hull, fill=255)
    ink.polygon(hull, fill=_a(strength, 235))
    fx = x + 0.18 * s * d  # figure near the stern
    body = max(1, int(s * 0.1))
    ink.line((fx, y - 0.1 * s, fx + 0.04 * s * d, y - 0.32 * s), fill=_a(strength, 240), width=body)
    hat = [(fx - 0.13 * s, y - 0.3 * s), (fx + 0.13 * s, y - 0.3 * s), (fx + 0.02 * s * d, y - 0.45 * s)]
    ink.polygon(hat, fill=_a(strength, 245))
    if rng.random() < 0.5:  # fishing rod and line
        tip = (fx + 0.9 * s * -d, y - 0.55 * s)
        ink.line((fx, y - 0.22 * s, tip[0], tip[1]), fill=_a(strength, 200), width=1)
        ink.line((tip[0], tip[1], tip[0] - 0.05 * s * d, y + 0.05 * s), fill=_a(strength, 90), width=1)
    else:  # reed awning at the bow
        ax = x - 0.2 * s * d
        ink.arc((ax - 0.2 * s, y - 0.36 * s, ax + 0.2 * s, y + 0.0 * s), 180, 360, fill=_a(strength, 220),
                width=max(1, int(s * 0.08)))


def ripples(layer: Layer, rng: np.random.Generator, x0: float, x1: float, y0: float, y1: float, n: int,
            pal: Palette, strength: float) -> None:
    """A few groups of short, faint, tapered horizontal ripple strokes inside a box."""
    ink = layer.pen(pal.ink, 2)
    for _ in range(n):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        ln = (x1 - x0) * rng.uniform(0.04, 0.12)
        for k in range(int(rng.integers(1, 4))):
            yy = cy + k * max(2.0, ln * 0.12)
            xx = cx + rng.uniform(-0.3, 0.3) * ln
            pts = curve(xx - ln / 2, yy, xx + ln / 2, yy + rng.uniform(-0.5, 0.5), rng.uniform(-1.2, 1.2), n=5)
            brush(ink, pts, 1.2, 0.6, _a(strength, rng.uniform(70, 130)))


def birds(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, count: int, pal: Palette) -> None:
    """A loose flock of `count` small flying birds drawn as two-stroke wings."""
    ink = layer.pen(pal.ink, 2)
    for _ in range(count):
        bx, by = x + rng.uniform(-2.5, 2.5) * s, y + rng.uniform(-1, 1) * s
        w = s * rng.uniform(0.35, 0.6)
        lift = w * rng.uniform(0.2, 0.6)
        ink.line([(bx - w, by - lift), (bx - w * 0.4, by - lift * 0.6), (bx, by)], fill=200, width=1)
        ink.line([(bx, by), (bx + w * 0.4, by - lift * 0.7), (bx + w, by - lift * 1.1)], fill=200, width=1)


def inscription(layer: Layer, rng: np.random.Generator, x: float, y: float, cell: float, chars: int,
                pal: Palette, seal: bool) -> None:
    """A column of small calligraphy-like glyphs from (x, y) downward, with an optional red seal below."""
    ink = layer.pen(pal.ink, 2)
    for i in range(chars):
        cx, cy = x, y + i * cell * 1.15
        for _ in range(int(rng.integers(3, 6))):
            kind = rng.random()
            ax, ay = cx + rng.uniform(-0.4, 0.3) * cell, cy + rng.uniform(-0.4, 0.3) * cell
            if kind < 0.4:
                ink.line((ax, ay, ax + cell * rng.uniform(0.3, 0.8), ay + rng.uniform(-0.1, 0.1) * cell), fill=190)
            elif kind < 0.75:
                ink.line((ax, ay, ax + rng.uniform(-0.1, 0.1) * cell, ay + cell * rng.uniform(0.3, 0.8)), fill=190)
            else:
                ink.line((ax, ay, ax + rng.uniform(-0.5, 0.5) * cell, ay + cell * 0.5), fill=170)
    if seal:
        stamp(layer, rng, x, y + chars * cell * 1.15 + cell * 0.6, cell * 1.3, pal)


def stamp(layer: Layer, rng: np.random.Generator, x: float, y: float, s: float, pal: Palette) -> None:
    """A red square seal with pale 'carved' marks, centred at (x, y)."""
    red, carve = layer.pen(pal.seal, 3), layer.pen(pal.paper, 4)
    red.rectangle((x - s / 2, y - s / 2, x + s / 2, y + s / 2), fill=225)
    for _ in range(int(rng.integers(3, 6))):
        ax, ay = x + rng.uniform(-0.32, 0.15) * s, y + rng.uniform(-0.32, 0.15) * s
        if rng.random() < 0.5:
            carve.line((ax, ay, ax + s * 0.3, ay), fill=200, width=1)
        else:
            carve.line((ax, ay, ax, ay + s * 0.3), fill=200, width=1)
