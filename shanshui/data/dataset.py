"""Write procedural paintings as a Hugging Face imagefolder, resumably and on all cores; load such folders back.

Layout written by `render_dataset(out, ...)`:
    out/images/00000000.png ...      one PNG per image, written to a temp file then os.replace'd into place
    out/metadata.jsonl               one JSON line per finished image: file_name, text_zh, text_en, attributes, seed
    out/dataset.json                 the options the folder was made with (size, seed, fmt, p_empty)
An image counts as done once its PNG is in place AND its metadata line exists, so an interrupted run is finished
by re-running the same command: only the missing images are rendered. `load_folder` reads this layout, any
imagefolder metadata.jsonl (`file_name` plus `text`/`text_zh`/`text_en`), or images with `.txt` caption sidecars.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from shanshui import limits
from shanshui.data.captions import captions_for
from shanshui.data.render import render
from shanshui.data.scene import FORMATS, sample_scene, scene_seed
from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_path, write_json_atomic

IMAGE_DIR = "images"
METADATA = "metadata.jsonl"
MANIFEST = "dataset.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_SIZE, MAX_SIZE = 64, 2048
PNG_LEVEL = 3  # zlib level: level 6 costs ~3x the time for ~10% smaller files


@dataclass
class RenderResult:
    """What one `render_dataset` call did."""

    out: Path
    total: int  # images in the data set (count)
    rendered: int  # images rendered by this call
    skipped: int  # images already complete from an earlier run
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Rendered images per second of this call."""
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Example:
    """One training example: an image file and its captions (empty strings when unconditional)."""

    path: Path
    text_zh: str = ""
    text_en: str = ""
    text: str = ""  # the caption to train on when a single one is wanted: zh, else en, else a plain `text`
    attributes: dict | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    def image(self) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        with Image.open(self.path) as im:
            return np.asarray(im.convert("RGB"))


def file_name(index: int) -> str:
    """The relative file name of image `index`."""
    return f"{IMAGE_DIR}/{index:08d}.png"


def example_record(index: int, size: int, seed: int, fmt: str | None, p_empty: float) -> tuple[dict, np.ndarray]:
    """The metadata line and the (size, size, 3) uint8 image of data set item `index` (pure function)."""
    s = scene_seed(seed, index)
    scene = sample_scene(s, fmt)
    zh, en, _ = captions_for(scene, np.random.default_rng([s, 0xCA97]), p_empty)
    meta = {"file_name": file_name(index), "text_zh": zh, "text_en": en, "attributes": scene.attributes(), "seed": s}
    return meta, render(scene, size)


def _work(job: tuple[Path, int, int, int, str | None, float]) -> dict:
    """Worker: render one item and write its PNG atomically; return its metadata line."""
    out, index, size, seed, fmt, p_empty = job
    meta, img = example_record(index, size, seed, fmt, p_empty)
    with atomic_path(out / meta["file_name"]) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", compress_level=PNG_LEVEL)
    return meta


def _validate(out: Path, count: int, size: int, seed: int, workers: int | None, fmt: str | None, p_empty: float) -> None:
    if not isinstance(count, int) or count < 1:
        raise ShanshuiError(f"--count must be at least 1 (got {count}); say how many images to render")
    limits.check_int("--count", count, *limits.RENDER_COUNT, "render a large set in several folders")
    if workers is not None:
        limits.check_threads(workers, "--workers")
    if not isinstance(size, int) or size % 8 or not MIN_SIZE <= size <= MAX_SIZE:
        raise ShanshuiError(f"--size must be a multiple of 8 from {MIN_SIZE} to {MAX_SIZE} (got {size}); try 256 or 512")
    if not isinstance(seed, int) or seed < 0:
        raise ShanshuiError(f"--seed must be a non-negative integer (got {seed})")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ShanshuiError(f"--workers must be at least 1 (got {workers}); leave it out to use every core")
    if fmt is not None and fmt not in FORMATS:
        raise ShanshuiError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r}); leave it out to mix them")
    if not 0.0 <= p_empty <= 1.0:  # NaN fails this too
        raise ShanshuiError(f"--p-empty must be between 0 and 1 (got {p_empty})")
    limits.check_seed(seed)
    try:
        (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ShanshuiError(f"cannot write to {out} ({e.strerror or e}); choose a folder you can write to") from None


def _read_done(out: Path) -> dict[int, str]:
    """Metadata lines of complete images by index (PNG present, line parses); drops torn or stray lines."""
    done: dict[int, str] = {}
    path = out / METADATA
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            m = re.fullmatch(rf"{IMAGE_DIR}/(\d{{8}})\.png", rec["file_name"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by an interruption
        if m and (out / rec["file_name"]).is_file():
            done[int(m.group(1))] = line
    return done


def render_dataset(out: Path, count: int, size: int = 256, seed: int = 0, workers: int | None = None,
                   progress: Callable[[int, int], None] | None = None, fmt: str | None = None,
                   p_empty: float = 0.1, chunk: int = 8) -> RenderResult:
    """Render `count` captioned paintings into `out` (imagefolder layout), skipping images already complete."""
    out = Path(out)
    _validate(out, count, size, seed, workers, fmt, p_empty)
    manifest = {"format": "shanshui-procedural", "version": 1, "size": size, "seed": seed, "fmt": fmt or "mixed",
                "p_empty": p_empty}
    mpath = out / MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ShanshuiError(f"{mpath} is corrupt; delete it to start the data set over, or choose another folder") from None
        diff = [f"{k}={old.get(k)!r}" for k in ("size", "seed", "fmt", "p_empty") if old.get(k) != manifest[k]]
        if diff:
            raise ShanshuiError(f"{out} already holds a data set made with {', '.join(diff)}; "
                                "re-run with those options to resume it, or choose another folder")
    else:
        write_json_atomic(mpath, manifest)
    for stray in (out / IMAGE_DIR).glob(".*.tmp"):  # temp files of a killed run
        stray.unlink(missing_ok=True)

    done = _read_done(out)
    with atomic_path(out / METADATA) as tmp:  # rewrite without torn lines, in index order
        tmp.write_text("".join(done[i] + "\n" for i in sorted(done)), encoding="utf-8")
    skipped = sum(1 for i in done if 0 <= i < count)
    n_todo = count - skipped
    if progress:
        progress(skipped, count)
    t0 = time.perf_counter()
    jobs = ((out, i, size, seed, fmt, p_empty) for i in range(count) if i not in done)  # lazy: nothing grows with count
    n_workers = min(workers or os.cpu_count() or 1, max(n_todo, 1))
    with open(out / METADATA, "a", encoding="utf-8") as meta_file:
        results: Iterable[dict]
        pool = multiprocessing.Pool(n_workers) if n_workers > 1 else None
        try:
            results = pool.imap(_work, jobs, chunksize=max(1, min(chunk, n_todo // (4 * n_workers) or 1))) if pool else map(_work, jobs)
            for n, meta in enumerate(results, start=1):
                meta_file.write(json.dumps(meta, ensure_ascii=False) + "\n")
                meta_file.flush()
                if progress:
                    progress(skipped + n, count)
        finally:
            if pool:
                pool.terminate()
                pool.join()
    return RenderResult(out, count, n_todo, skipped, time.perf_counter() - t0)


def load_folder(path: Path) -> list[Example]:
    """Examples from a folder: a metadata.jsonl (file_name + text/text_zh/text_en) or images with .txt sidecars."""
    path = Path(path)
    if not path.is_dir():
        raise ShanshuiError(f"{path} is not a folder; give a folder of images with captions")
    meta = path / METADATA
    if meta.is_file():
        return _load_jsonl(path, meta)
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not images:
        raise ShanshuiError(f"{path} has no images ({', '.join(IMAGE_EXTS)}) and no {METADATA}; "
                            "add images with .txt captions or a metadata.jsonl")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise ShanshuiError(f"{len(missing)} of {len(images)} images in {path} have no .txt caption "
                            f"(e.g. {missing[0].relative_to(path)}); add one beside each image or write a {METADATA}")
    out = []
    for p in images:
        text = p.with_suffix(".txt").read_text(encoding="utf-8").strip()
        out.append(_example(p, {"text": text}))
    return out


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in text)


def _example(image: Path, rec: dict) -> Example:
    text = str(rec.get("text", "") or "")
    zh = str(rec.get("text_zh", "") or ("" if not _has_cjk(text) else text))
    en = str(rec.get("text_en", "") or (text if text and not _has_cjk(text) else ""))
    known = {"file_name", "text", "text_zh", "text_en", "attributes", "seed"}
    return Example(path=image, text_zh=zh, text_en=en, text=zh or en or text, attributes=rec.get("attributes"),
                   seed=rec.get("seed"), extra={k: v for k, v in rec.items() if k not in known})


def _load_jsonl(root: Path, meta: Path) -> list[Example]:
    out = []
    for no, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name = rec["file_name"]
        except (ValueError, KeyError, TypeError):
            raise ShanshuiError(f"{meta} line {no} is not a JSON object with a file_name; fix or remove that line") from None
        image = root / name
        if not image.is_file():
            raise ShanshuiError(f"{meta} line {no} names {name}, which is missing; re-render or remove that line")
        out.append(_example(image, rec))
    if not out:
        raise ShanshuiError(f"{meta} lists no images; render some first (shanshui data render)")
    return out
