"""An export whose graphs keep their weights in a separate file beside them (`model.onnx.data`), for small machines.

ONNX Runtime memory-maps an external weight file and computes from the mapping, where a graph with its weights
inline is parsed into memory and its weights copied out of it: the load's peak holds both. Measured on SD 1.5's
fp32 text encoder (lean session, one thread): inline 678 MB peak resident, external 430 MB, of which 363 MB are
the mapped file's pages (which the kernel can drop and re-read under pressure; anonymous memory about 65 MB);
its fp16 form 777 → 570 MB. The values are the same bytes, so the images are the same. Needs the `onnx` package.
"""

from __future__ import annotations

import json
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_dir, link_tree, umask, write_json_atomic
from shanshui.integrity import record_files
from shanshui.spec.manifest import MANIFEST, open_exported

MIN_INLINE_BYTES = 16 * 2**20  # graphs with less inline weight than this stay as they are
SIZE_THRESHOLD = 1024  # tensors of at least this many bytes go to the weight file


def inline_bytes(path: Path) -> int:
    """Bytes of weights stored inside the graph file itself."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(len(t.raw_data) for t in model.graph.initializer if not t.external_data)


def load_with_weights(path: Path):
    """onnx.load of a model and its external weights (hard-linked weight files allowed, see read_weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    read_weights(model, Path(path).parent)
    return model


def read_weights(model, base_dir: Path) -> None:
    """Read the external weights of `model` into it (in place), from files under `base_dir`.

    onnx.load refuses a weight file with several hard links (its guard against hard-link attacks), and our exports
    share weight files between folders by hard links (`shanshui lowmem`, the bench cache, and the bounded int8
    quantizer's own streamed copy of its source: every bounded int8 quantize of SD 1.5 whose text encoder, weights
    beside the graph, fell back to fp16 failed after 40 minutes of calibration). This reads the same bytes, after
    the same containment check (a relative location inside `base_dir`)."""
    import onnx

    base = Path(base_dir).resolve()
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        path = (base / info["location"]).resolve()
        if Path(info["location"]).is_absolute() or base not in path.parents:
            raise ShanshuiError(f"weight {t.name} points outside its model folder ({info['location']}); re-export the model")
        with open(path, "rb") as f:
            f.seek(int(info.get("offset", 0)))
            t.raw_data = f.read(int(info["length"])) if "length" in info else f.read()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def externalize_file(src: Path, dst: Path) -> list[str]:
    """Write the graph `src` as `dst` + `dst.data` (every tensor of SIZE_THRESHOLD bytes or more in the data file);
    returns the file names written. `dst` must not be a hard link to `src`'s data (it is written anew)."""
    import onnx

    model = load_with_weights(src)  # weights read wherever they are
    data = dst.name + ".data"
    for stale in (dst, dst.with_name(data)):
        stale.unlink(missing_ok=True)  # a hard link into the source export is replaced, never written through
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=SIZE_THRESHOLD)
    dst.with_name(data).chmod(0o666 & ~umask())  # onnx creates it owner-only; the graph beside it is world-readable
    return [dst.name, data]


def externalize_export(src: Path, out: Path, min_bytes: int = MIN_INLINE_BYTES) -> tuple[dict, list[str]]:
    """A copy of the export `src` at `out` (other files hard-linked) whose components with at least `min_bytes`
    of inline weights keep them in a weight file. Returns (new manifest, components rewritten)."""
    exported = open_exported(Path(src))
    src, out = Path(src), Path(out)
    if out.exists():
        raise ShanshuiError(f"{out} already exists; choose a new folder")
    m = json.loads(json.dumps(exported.manifest))
    done = []
    with atomic_dir(out) as tmp:  # renamed into place when complete, removed if anything fails
        link_tree(src, tmp, skip=lambda p: p.name == MANIFEST)
        for name, entry in m["components"].items():
            path = exported.onnx_path(name)
            if entry.get("parts") or inline_bytes(path) < max(min_bytes, 1):
                continue
            for f in entry["files"]:
                (tmp / name / f).unlink(missing_ok=True)
            files = externalize_file(path, tmp / name / path.name)
            entry["files"], entry["sha256"] = record_files(tmp / name, files)
            done.append(name)
        write_json_atomic(tmp / MANIFEST, m)
    return m, done
