"""Atomic file writes, strict JSON reads and content hashes: nothing half-written ever looks complete."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from shanshui.errors import ShanshuiError


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


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside `final`; on success it replaces `final` (removed first if it exists), on
    failure it is removed. Readers never see a half-written folder under the final name."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*"):  # of a killed run writing the same folder
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShanshuiError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShanshuiError(f"{path} is not valid JSON ({e.__class__.__name__}); re-create the model folder") from None


def make_out_dir(out: Path) -> None:
    """Create an output folder, or say in one line why it cannot be."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShanshuiError(f"cannot create {out}: {e.strerror}; choose a writable folder") from None


def portable_paths(obj: object) -> object:
    """A copy of a JSON-able object whose absolute paths name no directory of this machine.

    Inside the package: `<shanshui>/…`; inside the cache: `<cache>/…`; anywhere else: `…/parent/name`.
    """
    if isinstance(obj, dict):
        return {k: portable_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v) for v in obj]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    bases = ((Path(__file__).resolve().parent, "<shanshui>"), (cache, "<cache>"), (Path.home(), "~"))
    if not isinstance(obj, str):
        return obj
    if not (obj.startswith(("/", "\\")) or obj[1:3] in (":\\", ":/")):  # text: paths inside it lose their base
        for base, label in bases:
            obj = obj.replace(str(base) + os.sep, label + "/") if str(base) != os.sep else obj
        return obj
    path = Path(obj)
    for base, label in bases[:2]:
        try:
            return f"{label}/{path.relative_to(base).as_posix()}"
        except ValueError:
            continue
    return "…/" + "/".join(path.parts[-2:])


def drop_load_path(config: Path) -> None:
    """Remove the `_name_or_path` (the folder a model was loaded from, an absolute path of this machine) that
    diffusers and transformers write into a saved config.json."""
    data = read_json(config)
    if isinstance(data, dict) and "_name_or_path" in data:
        del data["_name_or_path"]
        write_json_atomic(config, data)


def link_tree(src: Path, dst: Path, skip=lambda path: False) -> None:
    """The files under `src` at the same places under `dst`: hard links where the file system allows, else copies."""
    for path in Path(src).rglob("*"):
        if path.is_file() and not skip(path):
            target = Path(dst) / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
