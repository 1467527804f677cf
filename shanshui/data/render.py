"""Render a `Scene` as a shan shui painting (H, W, 3) uint8 with NumPy and Pillow only.

Formats: every render is a size x size image. `square` paints the whole sheet. `tall` (hanging scroll, 1:2) and
`wide` (handscroll, 2:1) paint a painting area of that proportion, centred on a silk mount with a thin brocade
border and a roller, so a data set of square images still shows the three formats.

Depth layers are painted far to near: pale bluish distant ranges, mist bands, the main massif (tapered outlines,
cun texture strokes, moss dots, optional waterfall), then the foreground (banks, rocks, water with ripples, trees,
buildings, boat). Same scene and size give byte-identical output in every process.
"""

from __future__ import annotations

import numpy as np

from shanshui.data import motifs
from shanshui.data.brush import Canvas, Layer, lerp_color, paper_texture, smoothstep
from shanshui.data.mountains import INK, PAPER, Peak, Skyline, mist_band, mountain
from shanshui.data.scene import Scene

MOUNTS = ((198, 204, 200), (214, 202, 172), (190, 196, 206))  # mount silk colours for scrolls


def painting_box(fmt: str, size: int) -> tuple[int, int, int, int]:
    """Where the painting sits in the size x size image: (x0, y0, w, h) for the format."""
    if fmt == "square":
        return 0, 0, size, size
    m = max(2, round(size * 0.045))
    long_side = size - 2 * m
    short = long_side // 2
    if fmt == "tall":
        return (size - short) // 2, m, short, long_side
    return m, (size - short) // 2, long_side, short


def palette(scene: Scene) -> motifs.Palette:
    """The colours for the scene's style and season."""
    leaf, dots, extra = {
        "spring": ((150, 190, 120), (70, 120, 60), (232, 150, 165)),
        "summer": ((90, 140, 90), (40, 80, 45), None),
        "autumn": ((220, 150, 80), (175, 60, 38), (215, 170, 60)),
        "winter": ((170, 170, 160), (60, 60, 58), None),
    }[scene.season]
    if scene.style == "ink":  # ink wash: colours are only light tints over ink dots
        leaf = lerp_color(leaf, PAPER, 0.35)
        dots = lerp_color(dots, INK, 0.45) if scene.season in ("summer", "winter") else dots
    return motifs.Palette(
        paper=PAPER, ink=INK, pine=(40, 58, 46) if scene.style == "ink" else (34, 80, 60), leaf=leaf,
        leaf_dots=dots, blossom=extra, willow=(120, 160, 80) if scene.season == "spring" else (80, 120, 70),
        roof=(70, 68, 66) if scene.style == "ink" else (120, 60, 45),
    )


def render(scene: Scene, size: int = 256) -> np.ndarray:
    """Paint `scene` into a (size, size, 3) uint8 image; the same scene and size give the same bytes."""
    x0, y0, w, h = painting_box(scene.fmt, size)
    art = _paint(scene, w, h, size / 256.0)  # (h, w, 3) uint8
    if scene.fmt == "square":
        return art
    out = _mount(scene, size, x0, y0, w, h)  # (size, size, 3) uint8
    out[y0 : y0 + h, x0 : x0 + w] = art
    return out


def _mount(scene: Scene, size: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The silk mount around a scroll painting: plain silk, a brocade rim and a dark roller."""
    silk = np.asarray(MOUNTS[scene.seed % len(MOUNTS)], dtype=np.float32)
    img = (paper_texture(size, size) * silk).clip(0, 255)  # (size, size, 3)
    rim = max(1, round(size / 128))
    img[y0 - rim : y0 + h + rim, x0 - rim : x0 + w + rim] = silk * 0.72
    bar = max(2, round(size * 0.022))
    if scene.fmt == "tall":  # top stick and bottom roller with knobs
        img[: bar // 2 + 1, x0 - 2 * rim : x0 + w + 2 * rim] = (70, 52, 40)
        img[size - bar :, x0 - 3 * rim : x0 + w + 3 * rim] = (58, 42, 32)
        img[size - bar :, x0 - 6 * rim : x0 - 3 * rim] = (120, 95, 60)
        img[size - bar :, x0 + w + 3 * rim : x0 + w + 6 * rim] = (120, 95, 60)
    else:  # handscroll: roller on the left
        img[y0 - 3 * rim : y0 + h + 3 * rim, : bar] = (58, 42, 32)
    return img.astype(np.uint8)


def _paint(scene: Scene, w: int, h: int, u: float) -> np.ndarray:
    """The painting itself, (h, w, 3) uint8."""
    rng = np.random.default_rng([scene.seed % 2**64, 0x9A17])  # stream tag: rendering details
    pal = palette(scene)
    cv = Canvas(w, h, PAPER)
    lay = Layer(w, h)
    sky = Skyline(w, h)
    k = (w * h) ** 0.5 / 256.0  # stroke scale: 1 at 256 x 256
    side = {"left": 0.3, "center": 0.5, "right": 0.7}[scene.main_side]
    free_side = 0.78 if side < 0.5 else 0.22  # where sky and water are more open
    mist_amt = {"none": 0.0, "light": 0.55, "heavy": 0.9}[scene.mist]

    # sky washes before mountains so peaks occlude them
    ys = np.arange(h, dtype=np.float32)[:, None] / h  # (h, 1)
    if scene.season == "winter":  # grey sky so snowy peaks stay paper-white
        cv.paint(np.broadcast_to((0.2 - 0.12 * ys), (h, w)), INK)
    if scene.time == "dusk":  # the sun sinks behind the ranges; the warm glow is a global tint at the end
        _disc(cv, free_side * w, h * 0.33, w * 0.045 + 2, (200, 70, 50), 0.75, 0.0)

    tall = scene.fmt == "tall"
    main_base = _ranges(cv, lay, rng, scene, pal, sky, k, side, mist_amt)
    _foreground(cv, lay, rng, scene, pal, sky, side, free_side, main_base, k, tall)
    lay.flush(cv, soften=0.4 * k)

    if scene.birds:
        bx = free_side * w
        by = min(h * 0.2, max(sky.top(bx) - h * 0.08, h * 0.08))
        motifs.birds(lay, rng, bx, by, 6 * k, scene.birds, pal)
    if rng.random() < 0.6:  # calligraphy inscription in an open corner
        ix = (0.93 if side < 0.5 else 0.07) * w
        motifs.inscription(lay, rng, ix, h * 0.06, 4.2 * k, int(rng.integers(4, 9)), pal, scene.seal)
    elif scene.seal:
        motifs.stamp(lay, rng, (0.92 if side < 0.5 else 0.08) * w, h * 0.93, 6 * k, pal)
    lay.flush(cv, soften=0.35 * k)
    return _light(cv, scene, ys, free_side)


def _ranges(cv: Canvas, lay: Layer, rng, scene: Scene, pal, sky: Skyline, k: float, side: float, mist_amt: float) -> float:
    """The mountain ranges, farthest first, each layer flushed and misted; returns the main massif's base line."""
    w, h = cv.w, cv.h
    layers = scene.layers
    tall = scene.fmt == "tall"
    wide = scene.fmt == "wide"
    far_base = h * (0.38 if tall else 0.5 if not wide else 0.55)
    main_base = h * (0.66 if tall else 0.72 if not wide else 0.74)
    fade = {"none": 0.22, "light": 0.38, "heavy": 0.52}[scene.mist]
    steep = scene.peak_shape == "steep"
    for li in range(layers):
        t = li / (layers - 1)  # 0 farthest .. 1 main massif
        strength = 0.28 + 0.72 * t**1.3
        base = far_base + (main_base - far_base) * t
        if li < layers - 1:
            n = int(rng.integers(2, 4)) + (2 if wide else 0)
            for _ in range(n):
                cx = rng.uniform(-0.05, 1.05) * w
                if li == layers - 2 and abs(cx / w - side) < 0.15:
                    cx = (side + rng.choice([-1, 1]) * rng.uniform(0.2, 0.4)) * w
                ht = h * rng.uniform(0.1, 0.22) * (1.2 if tall else 1.0) * (0.8 + 0.5 * t)
                hw = ht * rng.uniform(1.3, 2.6) if not steep else ht * rng.uniform(0.7, 1.3)
                if tall:
                    hw = min(hw, w * 0.5)
                pk = Peak(cx, base + rng.uniform(-0.02, 0.02) * h, ht, hw, scene.peak_shape, strength, ht * fade * 1.2)
                mountain(cv, lay, rng, pk, scene, k, sky)
            if li == layers - 2 and scene.building == "pagoda":
                _pagoda_knoll(cv, lay, rng, scene, pal, sky, base, side, strength, k, fade)
        else:
            _main_massif(cv, lay, rng, scene, pal, sky, side, main_base, fade, k, tall, wide)
        lay.flush(cv, soften=0.45 * k)
        if mist_amt > 0:
            mist_band(cv, rng, base - h * 0.01, h * (0.04 + 0.05 * mist_amt), mist_amt, k)

    if scene.mist == "heavy":  # a cloud belt across the waist of the main massif
        mist_band(cv, rng, main_base - h * rng.uniform(0.16, 0.26), h * 0.035, 0.9, k, patchy=True)
    return main_base


def _light(cv: Canvas, scene: Scene, ys: np.ndarray, free_side: float) -> np.ndarray:
    """Time-of-day light over everything, then the paper's texture; (h, w, 3) uint8."""
    w, h = cv.w, cv.h
    img = cv.rgb
    if scene.time == "night":
        img *= np.concatenate([0.56 + 0.1 * ys, 0.58 + 0.1 * ys, 0.68 + 0.08 * ys], axis=1)[:, None, :]  # (h,1,3)
        _disc(cv, free_side * w, h * 0.14, w * 0.05 + 2, (245, 240, 222), 1.0, 0.18)
    elif scene.time in ("dusk", "dawn"):  # warm glow toward the horizon, over everything
        glow = smoothstep(0.05, 0.65, ys)[:, :, None]  # (h, 1, 1)
        tint = (0.0, 0.1, 0.22) if scene.time == "dusk" else (0.0, 0.05, 0.06)
        base = (1.0, 0.97, 0.92) if scene.time == "dusk" else (1.0, 0.99, 1.0)
        img *= np.asarray(base, np.float32) * (1.0 - glow * np.asarray(tint, np.float32))  # (h, 1, 3)
    img *= paper_texture(w, h)
    return np.clip(img, 0, 255).astype(np.uint8)


def _disc(cv: Canvas, x: float, y: float, r: float, color, amount: float, halo: float) -> None:
    """A soft-edged disc (sun or moon) with an optional glow ring."""
    R = int(r * (3 if halo else 1.3)) + 2
    yy, xx = np.mgrid[-R : R + 1, -R : R + 1].astype(np.float32)  # (2R+1, 2R+1)
    dist = np.hypot(xx + (x - int(x)), yy + (y - int(y)))
    a = np.clip(r - dist + 0.5, 0, 1) * amount
    if halo:
        a = np.maximum(a, halo * np.clip(1 - (dist - r) / (2 * r), 0, 1) ** 2)
    cv.paint(a, color, int(y) - R, int(x) - R)


def _main_massif(cv, lay, rng, scene, pal, sky, side, base, fade, k, tall, wide) -> None:
    """The host peak and its companions, with an optional waterfall."""
    w, h = cv.w, cv.h
    steep = scene.peak_shape == "steep"
    top_room = h * (0.68 if tall else 0.6 if not wide else 0.6)
    main_h = top_room * rng.uniform(0.85, 1.0) * (1.0 if steep else 0.72)
    hw_scale = (rng.uniform(0.36, 0.6) if steep else rng.uniform(0.9, 1.3)) * (1.6 if wide else 1.0)
    cx = side * w + rng.uniform(-0.05, 0.05) * w
    specs = [(cx, base, main_h, min(main_h * hw_scale * rng.uniform(0.85, 1.15), w * (0.48 if tall else 0.38)))]
    for i in range(scene.peaks - 1):
        off = rng.choice([-1, 1]) * rng.uniform(0.14, 0.3) * w * (1.3 if wide else 1.0)
        ph = main_h * rng.uniform(0.45, 0.75)
        specs.append((cx + off, base + h * rng.uniform(0.0, 0.04), ph, ph * hw_scale * rng.uniform(0.8, 1.2)))
    specs.sort(key=lambda s: s[1])  # farther bases first
    for sx, sb, sh, shw in specs:
        mountain(cv, lay, rng, Peak(sx, sb, sh, shw, scene.peak_shape, 1.0, sh * fade), scene, k, sky)
    if scene.waterfall:
        fx = cx + rng.uniform(-0.25, 0.25) * specs[0][3] * 0.5
        y_top = sky.top(fx) + main_h * rng.uniform(0.15, 0.3)
        y_bot = min(y_top + main_h * rng.uniform(0.25, 0.45), base - main_h * 0.12)
        if y_bot > y_top:
            _waterfall(lay, rng, fx, y_top, y_bot, k, pal)


def _waterfall(lay, rng, x, y0, y1, k, pal) -> None:
    """A narrow fall: cleared paper strip with broken ink banks, fading at the foot."""
    clear, ink = lay.pen(pal.paper, 5), lay.pen(pal.ink, 6)
    wd = max(1.5, 2.2 * k)
    steps = 8
    for i in range(steps):
        a, b = y0 + (y1 - y0) * i / steps, y0 + (y1 - y0) * (i + 1) / steps
        xo = x + np.sin(i * 0.9) * wd * 0.4
        clear.rectangle((xo - wd, a, xo + wd, b + 1), fill=int(255 * min(1.0, 1.6 * (1 - i / steps))))
        fade = int(230 * (1 - i / steps))
        ink.line((xo - wd - 1, a, xo - wd - 1, b - 1), fill=fade, width=1)
        ink.line((xo + wd + 1, a + 1, xo + wd + 1, b), fill=int(fade * 0.8), width=1)


def _pagoda_knoll(cv, lay, rng, scene, pal, sky, base, side, strength, k, fade) -> None:
    """A mid-distance hill on the open side crowned with a pagoda."""
    w, h = cv.w, cv.h
    kx = (side + (0.3 if side <= 0.5 else -0.3) + rng.uniform(-0.05, 0.05)) * w
    kh = h * rng.uniform(0.16, 0.24)
    mountain(cv, lay, rng, Peak(kx, base + h * 0.06, kh, kh * 1.1, "rounded", max(strength, 0.7), kh * fade), scene,
             k, None)
    top = base + h * 0.06 - kh * 0.97
    motifs.pagoda(lay, rng, kx, top + 2 * k, 8.0 * k, pal, max(strength, 0.75))


def _foreground(cv, lay, rng, scene, pal, sky, side, free_side, main_base, k, tall) -> None:
    """Banks, water, rocks, trees, buildings and the boat, nearest the viewer."""
    w, h = cv.w, cv.h
    banks: list[tuple[Peak, np.ndarray]] = []
    tree_side = 1.0 - free_side if scene.water != "none" else rng.uniform(0.25, 0.75)
    water_top = main_base + h * 0.02
    _water(cv, lay, rng, scene, pal, free_side, water_top, k)

    # the near bank(s): trees stand here
    bank_h = h * (0.16 if scene.water == "none" else 0.2) * (0.8 if tall else 1.0)
    if scene.water == "none":
        specs = [(tree_side * w, h * 1.04, bank_h, w * 0.55), ((1 - tree_side) * w, h * 1.08, bank_h * 0.6, w * 0.4)]
    else:
        edge = 0.0 if tree_side < 0.5 else 1.0
        specs = [(edge * w + (0.08 if edge == 0 else -0.08) * w, h * 1.04, bank_h, w * (0.5 if tall else 0.42))]
        if scene.water == "river":
            specs.append(((1 - edge) * w, h * 1.06, bank_h * 0.4, w * 0.22))
    for bx, bb, bh, bw in specs[::-1]:
        pk = Peak(bx, bb, bh, bw, "bank", 1.0, bh * 0.5)
        banks.append((pk, mountain(cv, lay, rng, pk, scene, k, None)))
    lay.flush(cv, soften=0.35 * k)

    main_bank, main_top = banks[-1]

    def ground(x: float) -> float:
        i = int(np.clip(x - max(0, int(np.floor(main_bank.cx - main_bank.hw))), 0, len(main_top) - 1))
        return float(main_top[i])

    lo = max(main_bank.cx - main_bank.hw * 0.65, w * 0.05)
    hi = min(main_bank.cx + main_bank.hw * 0.65, w * 0.95)
    if scene.building in ("house", "pavilion"):
        bx = rng.uniform(lo, hi)
        s = (11.0 if scene.building == "pavilion" else 10.0) * k
        getattr(motifs, scene.building)(lay, rng, bx, ground(bx) + 2 * k, s, pal, 1.0)
    for _ in range(scene.rocks):
        rx = rng.uniform(lo - 0.1 * w, hi + 0.1 * w)
        motifs.rock(lay, rng, rx, min(ground(rx) + rng.uniform(4, 14) * k, h * 0.99), rng.uniform(5, 10) * k, pal, 1.0)
    lay.flush(cv, soften=0.35 * k)

    trees = [kind for kind, n in scene.trees for _ in range(n)]
    order = rng.permutation(len(trees)) if trees else []
    lone = len(trees) == 1
    for j, ti in enumerate(order):
        kind = trees[int(ti)]
        tx = rng.uniform(lo, hi) if not lone else rng.uniform(lo, hi) * 0.6 + main_bank.cx * 0.4
        th = h * (rng.uniform(0.2, 0.3) if not lone else rng.uniform(0.3, 0.38)) * (0.75 if tall else 1.0)
        if kind == "bare" or kind == "willow":
            th *= 0.85
        motifs.TREE_DRAWERS[kind](lay, rng, tx, ground(tx) + 2 * k, th, pal, 1.0)
    lay.flush(cv, soften=0.3 * k)

    if scene.boat:
        _boat(lay, rng, pal, banks, free_side, water_top, k, w, h)


def _water(cv, lay, rng, scene, pal, free_side: float, water_top: float, k: float) -> None:
    """Far shores and ripples of a lake or river (nothing for dry land)."""
    w, h = cv.w, cv.h
    if scene.water == "lake":  # a far low shore, ripples across
        far = Peak(free_side * w, water_top, h * 0.035, w * 0.35, "rounded", 0.45, h * 0.02)
        mountain(cv, lay, rng, far, scene, k, None)
    elif scene.water == "river":  # receding far banks suggest the winding course
        for j in range(2):
            fx = (0.0 if (j % 2 == 0) == (free_side > 0.5) else 1.0) * w
            far = Peak(fx, water_top + h * 0.05 * (j + 1), h * 0.03, w * 0.3, "rounded", 0.45 + 0.2 * j, h * 0.02)
            mountain(cv, lay, rng, far, scene, k, None)
    if scene.water != "none":
        motifs.ripples(lay, rng, 0, w, water_top + h * 0.04, h * 0.98, int(7 + 5 * k), pal, 0.9)
    lay.flush(cv, soften=0.35 * k)


def _boat(lay, rng, pal, banks, free_side: float, water_top: float, k: float, w: int, h: int) -> None:
    """A boat on open water, clear of every bank."""
    y = rng.uniform(water_top + h * 0.08, h * 0.9)
    cand = np.linspace(0.1, 0.9, 17) * w
    ok = [x for x in cand if all(_bank_top(pk, top, x) > y + 6 * k for pk, top in banks)]
    x = ok[int(rng.integers(len(ok)))] if ok else free_side * w
    s = (9 + 10 * (y - water_top) / (h - water_top)) * k
    motifs.boat(lay, rng, float(x), float(y), s, pal, 1.0)
    motifs.ripples(lay, rng, x - s * 1.2, x + s * 1.2, y + s * 0.2, y + s * 0.5, 2, pal, 1.0)


def _bank_top(pk: Peak, top: np.ndarray, x: float) -> float:
    """The bank's ridge height at column x (+inf outside the bank)."""
    x0 = max(0, int(np.floor(pk.cx - pk.hw)))
    i = int(x) - x0
    return float(top[i]) if 0 <= i < len(top) else float("inf")
