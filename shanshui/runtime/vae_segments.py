"""Exact tiled VAE decoding over the decoder's segments (cut at its group norms by shanshui/export/vae_segments.py).

Each segment runs over every tile in turn: a tile's inputs are cut from what earlier segments made, with a border
(`halo`) as wide as the segment's convolutions reach, and only the tile's own region of each output is kept (on
disk when large, so the peak is one tile's activations and one segment's weights). Each group norm gets the whole
image's mean and inverse deviation, summed over the tiles' own regions as the tensor before it is made. Segments
marked whole (at the latent's resolution: the mid block and its attention) run once on the whole tensors.
NumPy only: torch- and onnx-free.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

DISK_BYTES = 4 * 2**20  # pieces of tensors at least this large (all tiles together) go to a temp folder, not the heap


class _Store:
    """Tensors made by segments, as pieces that each cover a rectangle of the tensor's own pixels."""

    def __init__(self, root: Path | None):
        self.root, self.pieces, self.n = root, {}, 0

    def put(self, name: str, rect: tuple[int, int, int, int], value: np.ndarray, tiles: int = 1) -> None:
        if self.root is not None and value.nbytes * tiles >= DISK_BYTES:
            path = self.root / f"{self.n:06d}.npy"
            self.n += 1
            np.save(path, value, allow_pickle=False)
            value = path
        self.pieces.setdefault(name, []).append((rect, value))

    def get(self, name: str, rect: tuple[int, int, int, int]) -> np.ndarray:
        """The rectangle (y0, y1, x0, x1) of tensor `name`, gathered from the pieces that cover it."""
        y0, y1, x0, x1 = rect
        out = None
        for (py0, py1, px0, px1), value in self.pieces[name]:
            a, b, c, d = max(y0, py0), min(y1, py1), max(x0, px0), min(x1, px1)
            if a >= b or c >= d:
                continue
            src = np.load(value, mmap_mode="r", allow_pickle=False) if isinstance(value, Path) else value
            if out is None:
                out = np.empty(src.shape[:2] + (y1 - y0, x1 - x0), dtype=src.dtype)
            out[:, :, a - y0:b - y0, c - x0:d - x0] = src[:, :, a - py0:b - py0, c - px0:d - px0]
            del src
        if out is None:
            raise KeyError(f"{name} has no piece over {rect}")
        return out

    def drop(self, name: str) -> None:
        for _, value in self.pieces.pop(name, []):
            if isinstance(value, Path):
                value.unlink(missing_ok=True)


def grid(size: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) ranges of the fewest tiles of at most `tile` that cover [0, size), as equal as they can be."""
    k = max(1, -(-size // max(1, tile)))
    bounds = [round(i * size / k) for i in range(k + 1)]
    return list(zip(bounds, bounds[1:]))


class _Stats:
    """Per group norm input: sums of x and x² per group over the tiles' own regions (float64)."""

    def __init__(self, norms: list[dict]):
        self.norms = {m["input"]: m for m in norms}
        self.sums: dict[str, list] = {}

    def add(self, name: str, core: np.ndarray) -> None:
        m = self.norms.get(name)
        if m is None:
            return
        g = core.reshape(core.shape[0], m["groups"], core.shape[1] // m["groups"], -1).astype(np.float64)  # (B, G, C/G, hw)
        s1, s2, n = g.sum(axis=(2, 3)), (g * g).sum(axis=(2, 3)), g.shape[2] * g.shape[3]
        old = self.sums.get(name)
        self.sums[name] = [s1, s2, n] if old is None else [old[0] + s1, old[1] + s2, old[2] + n]

    def feeds(self, norm: dict) -> dict[str, np.ndarray]:
        s1, s2, n = self.sums[norm["input"]]
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        invstd = 1.0 / np.sqrt(var + norm["eps"])
        return {norm["mean"]: mean[:, :, None].astype(np.float32), norm["invstd"]: invstd[:, :, None].astype(np.float32)}


def _scaled(rect, f: float):
    return tuple(int(round(v * f)) for v in rect)


def decode_segmented(load: Callable[[int], Callable[[dict], dict]], segments: list[dict], z: np.ndarray, tile: int,
                     output: str = "sample", workdir: Path | None = None) -> np.ndarray:
    """load(k) -> run(feeds) -> {output name: array}: segment k's session (loaded once, dropped after its tiles).
    z: (B, C, h, w) latents; tile: the largest tile side in latent pixels. Returns the decoder's `output`."""
    b, _, h, w = z.shape
    rows, cols = grid(h, tile), grid(w, tile)
    last = {}
    for k, seg in enumerate(segments):
        for name in seg["inputs"]:
            last[name] = k
    norms = [m for seg in segments for m in seg["norms"]]
    root = Path(tempfile.mkdtemp(prefix=".shanshui-vae-", dir=workdir))
    try:
        store, stats = _Store(root), _Stats(norms)
        store.put(next(iter(segments[0]["in_scales"]), "latent_sample"), (0, h, 0, w), z)
        for k, seg in enumerate(segments):
            run = load(k)
            tiles = [(r, c) for r in rows for c in cols] if seg["tiled"] else [((0, h), (0, w))]
            for (y0, y1), (x0, x1) in tiles:
                _run_tile(run, seg, store, stats, (y0, y1, x0, x1), (h, w), len(tiles))
            del run
            for name in [n for n, j in last.items() if j == k and n != output]:
                store.drop(name)
        return store.get(output, (0, h * segments[-1]["out_scales"][output], 0, w * segments[-1]["out_scales"][output]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_tile(run, seg: dict, store: _Store, stats: _Stats, core: tuple, latent_hw: tuple[int, int],
              tiles: int = 1) -> None:
    """One tile of one segment: inputs cut with the halo, outputs' own regions kept, their statistics summed."""
    s, halo = seg["scale"], seg["halo"] if seg["tiled"] else 0
    h, w = latent_hw
    y0, y1, x0, x1 = _scaled(core, s)
    region = (max(0, y0 - halo), min(h * s, y1 + halo), max(0, x0 - halo), min(w * s, x1 + halo))  # at scale s
    feeds = {}
    for name, si in seg["in_scales"].items():
        feeds[name] = store.get(name, _scaled(region, si / s))
    for m in seg["norms"]:
        feeds.update(stats.feeds(m))
    outs = run(feeds)
    for name, so in seg["out_scales"].items():
        value = outs[name]
        f = so / s
        oy0, oy1, ox0, ox1 = _scaled(region, f)
        if value.shape[2:] != (oy1 - oy0, ox1 - ox0):
            raise RuntimeError(f"VAE segment output {name} is {value.shape[2:]}, expected {(oy1 - oy0, ox1 - ox0)}")
        cy0, cy1, cx0, cx1 = _scaled(core, so)
        own = np.ascontiguousarray(value[:, :, cy0 - oy0:cy1 - oy0, cx0 - ox0:cx1 - ox0])
        stats.add(name, own)
        store.put(name, (cy0, cy1, cx0, cx1), own, tiles)
