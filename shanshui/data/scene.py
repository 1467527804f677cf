"""Scene descriptions for procedural shan shui paintings: every salient element, drawn from one seed.

A `Scene` is what a painting shows (format, style, season, mountains, water, trees, ...). It is drawn with
`np.random.default_rng(seed)` only, so the same seed gives the same scene on every machine and process. The
renderer (`render.py`) and the captioner (`captions.py`) both read the scene, so captions are exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FORMATS = ("square", "tall", "wide")  # square sheet / tall hanging scroll 立轴 (1:2) / wide handscroll 手卷 (2:1)
STYLES = ("ink", "blue_green")  # ink wash 水墨 / blue-green 青绿
SEASONS = ("spring", "summer", "autumn", "winter")
TIMES = ("day", "dawn", "dusk", "night")  # night always shows a moon
PEAK_SHAPES = ("steep", "rounded")  # tall craggy peaks / soft rounded hills
SIDES = ("left", "center", "right")
MISTS = ("none", "light", "heavy")
WATERS = ("none", "river", "lake")
TREE_KINDS = ("pine", "leafy", "bare", "willow")
BUILDINGS = ("none", "pavilion", "house", "pagoda")


@dataclass(frozen=True)
class Scene:
    """One painting's content; all fields are plain str/int/bool/tuples so the scene is hashable and JSON-able."""

    seed: int
    fmt: str  # one of FORMATS
    style: str  # one of STYLES
    season: str  # one of SEASONS
    time: str  # one of TIMES
    layers: int  # mountain depth layers, 2..4 (farthest pale range to the main massif)
    peak_shape: str  # one of PEAK_SHAPES
    main_side: str  # where the main peak stands: one of SIDES
    peaks: int  # number of peaks in the main massif, 1..4
    mist: str  # one of MISTS
    water: str  # one of WATERS
    boat: bool  # a small boat with a figure (only on water)
    waterfall: bool  # a waterfall down the main massif
    trees: tuple[tuple[str, int], ...]  # ((kind, count), ...) kinds from TREE_KINDS, each at most once, count >= 1
    building: str  # one of BUILDINGS
    rocks: int  # foreground rocks, 0..3
    birds: int  # birds in the sky, 0..5
    seal: bool  # a red seal stamp (not captioned)

    @property
    def tree_kinds(self) -> tuple[str, ...]:
        """The tree kinds present, in TREE_KINDS order."""
        return tuple(k for k, _ in self.trees)

    def tree_count(self, kind: str) -> int:
        """How many trees of `kind` the scene has (0 if none)."""
        return dict(self.trees).get(kind, 0)

    def attributes(self) -> dict:
        """The structured attributes as a JSON-serialisable dict (trees as {kind: count})."""
        d = asdict(self)
        d["trees"] = {k: n for k, n in self.trees}
        return d


def _pick(rng: np.random.Generator, values: tuple[str, ...], weights: tuple[float, ...]) -> str:
    p = np.asarray(weights, dtype=np.float64)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def sample_scene(seed: int, fmt: str | None = None) -> Scene:
    """Draw a scene from `seed` (same seed, same scene everywhere); `fmt` forces the format."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    rng = np.random.default_rng([int(seed) % 2**64, 0x5C3E])  # stream tag: scene
    fmt_drawn = _pick(rng, FORMATS, (0.4, 0.35, 0.25))
    style = _pick(rng, STYLES, (0.65, 0.35))
    season = _pick(rng, SEASONS, (1, 1, 1, 1))
    time = _pick(rng, TIMES, (0.55, 0.15, 0.15, 0.15))
    layers = int(rng.choice([2, 3, 4], p=[0.3, 0.45, 0.25]))
    peak_shape = _pick(rng, PEAK_SHAPES, (0.65, 0.35))
    main_side = _pick(rng, SIDES, (0.4, 0.2, 0.4))
    peaks = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    mist = _pick(rng, MISTS, (0.2, 0.45, 0.35))
    water = _pick(rng, WATERS, (0.3, 0.4, 0.3))
    boat = water != "none" and bool(rng.random() < 0.55)
    waterfall = peak_shape == "steep" and bool(rng.random() < 0.3)

    kinds_p = {  # chance of each kind, by season: no leaves or willows in winter, more bare trees
        "pine": 0.6,
        "leafy": 0.0 if season == "winter" else 0.5,
        "bare": 0.6 if season == "winter" else (0.3 if season == "autumn" else 0.12),
        "willow": 0.0 if season in ("winter", "autumn") else (0.35 if water != "none" else 0.1),
    }
    draws = rng.random(len(TREE_KINDS))
    counts = rng.integers(1, 6, size=len(TREE_KINDS))  # 1..5 per kind
    trees = []
    for kind, u, n in zip(TREE_KINDS, draws, counts):
        if u < kinds_p[kind]:
            n = int(n) if kind != "willow" else int(min(n, 2))
            trees.append((kind, n))
    if not trees and rng.random() < 0.7:  # mostly at least one tree; a lone pine is the classic
        trees.append(("pine", 1))
    if len(trees) == 1 and rng.random() < 0.35:
        trees[0] = (trees[0][0], 1)

    building = _pick(rng, BUILDINGS, (0.35, 0.25, 0.25, 0.15))
    rocks = int(rng.choice([0, 1, 2, 3], p=[0.35, 0.3, 0.2, 0.15]))
    birds = 0 if time == "night" or rng.random() < 0.75 else int(rng.integers(2, 6))
    seal = bool(rng.random() < 0.8)
    return Scene(
        seed=int(seed), fmt=fmt or fmt_drawn, style=style, season=season, time=time, layers=layers,
        peak_shape=peak_shape, main_side=main_side, peaks=peaks, mist=mist, water=water, boat=boat,
        waterfall=waterfall, trees=tuple(trees), building=building, rocks=rocks, birds=birds, seal=seal,
    )


def scene_seed(base_seed: int, index: int) -> int:
    """The scene seed of image `index` in a data set made with `base_seed` (stable, well mixed, < 2**48)."""
    ss = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 0xDA7A])
    state = ss.generate_state(2, dtype=np.uint32)  # (2,) uint32
    return (int(state[0]) << 16) | (int(state[1]) & 0xFFFF)


def scene_from_attributes(attrs: dict | None) -> Scene | None:
    """The Scene a data set's metadata line describes (`Scene.attributes()` read back), or None when `attrs` is not
    one (a user's folder, an older or edited file): every field present, of its vocabulary, nothing else."""
    if not isinstance(attrs, dict) or set(attrs) != set(Scene.__dataclass_fields__):
        return None
    trees = attrs["trees"]
    if not isinstance(trees, dict) or not all(k in TREE_KINDS and type(n) is int and n >= 1 for k, n in trees.items()):
        return None
    vocab = {"fmt": FORMATS, "style": STYLES, "season": SEASONS, "time": TIMES, "peak_shape": PEAK_SHAPES,
             "main_side": SIDES, "mist": MISTS, "water": WATERS, "building": BUILDINGS}
    if not all(attrs[k] in v for k, v in vocab.items()):
        return None
    try:
        scene = Scene(**{**attrs, "trees": tuple((k, trees[k]) for k in TREE_KINDS if k in trees)})
    except TypeError:
        return None
    return scene if scene.attributes() == attrs else None
