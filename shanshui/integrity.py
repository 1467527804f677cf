"""Is what we load what we wrote? File hashes in the manifest, paths kept inside their folder, strict JSON, finite
stage outputs, and safetensors headers that match their file.

Design: export and quantize record every listed file's size and sha256 (one streaming pass when the file is
written); the loader checks each component's sizes and hashes before ONNX Runtime sees it. sha256 runs at about
0.7 GB/s here, 40 ms for the shipped 29 MB model (its sessions take ~20x that to build), so it is always on.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError

CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def record_files(folder: Path, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """({name: size}, {name: sha256}) of files in `folder`, for a manifest entry."""
    folder = Path(folder)
    return ({n: (folder / n).stat().st_size for n in names}, {n: sha256_file(folder / n) for n in names})


def inside(root: Path, rel: object, what: str) -> Path:
    """root/rel, refused unless it is a relative path that stays inside root (symbolic links followed)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ShanshuiError(f"{what} in {Path(root).name}: {rel!r} is not a file name; re-run `shanshui export`")
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if Path(rel).is_absolute() or base not in path.parents:
        raise ShanshuiError(f"{what} {rel!r} points outside its export folder {Path(root).name}; refusing to read it. "
                            "Re-export the model, and do not trust a folder whose manifest was edited")
    return base / rel


def verify_component(root: Path, name: str, entry: dict) -> None:
    """The files a manifest lists for a component exist, inside the folder, with the recorded size and sha256."""
    folder = inside(root, name, "component folder")
    sizes, hashes = entry.get("files") or {}, entry.get("sha256") or {}
    if not isinstance(sizes, dict) or not isinstance(hashes, dict):
        raise ShanshuiError(f"the manifest of {Path(root).name} lists {name}'s files wrongly; re-run `shanshui export`")
    if not all(type(v) is int and v >= 0 for v in sizes.values()) or not all(isinstance(v, str) for v in hashes.values()):
        raise ShanshuiError(f"the manifest of {Path(root).name} lists {name}'s file sizes or hashes wrongly; "
                            "re-run `shanshui export`")
    for fname, size in sizes.items():
        path = inside(folder, fname, f"{name} file")
        if not path.is_file():
            raise ShanshuiError(f"{name}/{fname} is missing from {Path(root).name}; re-run `shanshui export` to complete it")
        actual = path.stat().st_size
        if actual != size:
            raise ShanshuiError(f"{name}/{fname} in {Path(root).name} is {actual:,} bytes, the export wrote {size:,}: "
                                "the file is damaged; re-run `shanshui export` (or copy the folder again)")
        if fname in hashes and sha256_file(path) != hashes[fname]:
            raise ShanshuiError(f"{name}/{fname} in {Path(root).name} does not match the hash its export recorded: "
                                "the file is damaged or was changed; re-run `shanshui export` (or copy the folder again)")


def loads_strict(text: str | bytes, what: str) -> object:
    """JSON as the standard defines it: NaN, Infinity and -Infinity are refused."""
    def no_constant(c):
        raise ValueError(f"{c} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ShanshuiError(f"{what} is corrupt ({str(e).splitlines()[0][:80]}); delete it and write it again") from None


def check_finite(stage: str, x: np.ndarray) -> np.ndarray:
    """A stage's output must be finite: NaN or Inf is an error naming the stage, never a black picture."""
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ShanshuiError(f"the {stage} produced {bad:,} NaN/Inf values: the model files are damaged or the model "
                            "is unstable at these settings; re-export it, or try fewer steps or a lower guidance")
    return x


def check_safetensors(path: Path) -> None:
    """A safetensors file's header parses and its tensors end exactly at the end of the file (not cut short)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, 100 << 20):
                raise ValueError("no header")
            header = json.loads(f.read(n))
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
        raise ShanshuiError(f"{path.parent.name}/{path.name} is not a readable safetensors file; copy it again or "
                            "re-save the model") from None
    if 8 + n + max(ends, default=0) != size:
        raise ShanshuiError(f"{path.parent.name}/{path.name} is {size:,} bytes but its header needs "
                            f"{8 + n + max(ends, default=0):,}: the file was cut short; copy it again or re-save the model")


def check_manifest(m: object, path: Path) -> dict:
    """The shape of an export manifest: the fields the runtime reads exist and have the right types."""
    def bad(what: str):
        return ShanshuiError(f"{path} is not a valid shanshui manifest ({what}); re-run `shanshui export`")

    if not isinstance(m, dict):
        raise bad(f"a JSON {type(m).__name__}, not an object")
    for key, kind in (("dims", dict), ("shapes", dict), ("components", dict), ("tokenizer", dict)):
        if not isinstance(m.get(key), kind):
            raise bad(f"no {key}")
    for key in ("text_len", "text_dim", "vocab_size", "latent_channels", "vae_scale", "size_multiple"):
        if not _positive_int(m["dims"].get(key)):
            raise bad(f"dims.{key} is {m['dims'].get(key)!r}")
    for key in ("height", "width", "min_size", "max_size", "max_batch"):
        if key in m["shapes"] and not _positive_int(m["shapes"][key]):
            raise bad(f"shapes.{key} is {m['shapes'][key]!r}")
    if not {"height", "width"} <= set(m["shapes"]) <= {"height", "width", "min_size", "max_size", "max_batch"}:
        raise bad(f"shapes {sorted(m['shapes'])}")
    if len(m["dims"]) != 6:
        raise bad(f"dims {sorted(m['dims'])}")
    sf = m.get("vae_scaling_factor")
    if not isinstance(sf, (int, float)) or isinstance(sf, bool) or not math.isfinite(sf) or sf <= 0:
        raise bad(f"vae_scaling_factor is {sf!r}")
    if not _positive_int(m["tokenizer"].get("max_length")) or not isinstance(m["tokenizer"].get("pad_token"), str):
        raise bad("tokenizer settings")
    for name, entry in m["components"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise bad(f"components.{name}")
    return m


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def component_intact(root: Path, name: str, entry: dict) -> bool:
    """verify_component as a yes/no (an export reuses a component only when it is intact)."""
    try:
        verify_component(root, name, entry)
    except ShanshuiError:
        return False
    return bool(entry.get("sha256"))


def remove_stale_temps(out: Path, names: list[str]) -> list[Path]:
    """Remove `.NAME.*` temp files and folders a killed run of the same command left in `out` (NAME may end in `-`:
    then `.NAME*`)."""
    import glob
    import shutil

    removed = []
    for name in names:
        for p in Path(out).glob(f".{glob.escape(name)}*" if name.endswith("-") else f".{glob.escape(name)}.*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
