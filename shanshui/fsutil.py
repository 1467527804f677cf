"""Atomic file writes and content hashes: nothing half-written ever looks complete."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it into place, on failure remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):  # of a killed run writing the same file
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(final: Path, obj: object) -> None:
    """Strict JSON: a non-finite float (an infinite PSNR of identical images) is written as null, never NaN."""
    text = json.dumps(finite_json(obj), indent=2, ensure_ascii=False, allow_nan=False)
    write_bytes_atomic(final, (text + "\n").encode("utf-8"))


def sha256_files(paths: list[Path], chunk: int = 1 << 22) -> str:
    """One sha256 over the names and contents of `paths`, in the order given."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def finite_json(obj: object) -> object:
    """`obj` with non-finite floats replaced by None (JSON has no NaN or Infinity), for reports we write."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
