"""`shanshui quantize IN OUT --precision fp16`: a lower-precision copy of an fp32 export, gated against it.

The candidate is built in a hidden folder inside OUT, checked (finite outputs per component, then the image
quality gate), and only then moved into place with its manifest written last. A failed gate leaves OUT as it was.
int8 quantizes the U-Net (calibrated static QDQ, see int8.py); the text encoder and VAE decoder and encoder become
int8 where their own output measures within COMPONENT_FLOORS of fp32, fp16 otherwise. The gate (gate.py) paints
image-to-image too when the export has a VAE encoder.
"""

from __future__ import annotations

import copy
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.integrity import component_intact, record_files, remove_stale_temps

PRECISIONS = ("fp16", "int8")
INT8_TARGETS = ("cpu", "tensorrt")
FP16_VERSION = 3  # bump when a conversion changes, so old outputs are rebuilt
# Calibration prompts (distinct from the gate's), painted with the fp32 export to record real U-Net inputs.
CALIBRATION_PROMPTS = (
    "水墨山水，远山如黛，江上渔舟", "a pine on a cliff above a misty river", "秋山红叶，夕阳西下，凉亭",
    "blue-green mountains with a pagoda at dawn", "冬日雪景，枯树寒林", "a lake under the moon, a small boat",
)
CALIBRATION_SEEDS = (0,)
CALIBRATION_STEPS = 10


def _copy_side_files(src: Path, dst: Path) -> None:
    for sub in ("scheduler", "tokenizer"):
        shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)
    shutil.copy2(src / "model_index.json", dst / "model_index.json")


def quantize_export(src: Path, out: Path, precision: str = "fp16", check: bool = True,
                    on_event: Callable[[str, str], None] = lambda c, e: None, int8_target: str = "cpu") -> dict:
    """Convert the fp32 export at `src` to `precision` into `out`; returns the new manifest.

    int8_target: `cpu` — uint8 activations with zero points (ONNX Runtime's fast u8×s8 kernels); `tensorrt` —
    symmetric int8 activations, the only Q/DQ form TensorRT's explicit quantization takes."""
    from shanshui.export.contract import components
    from shanshui.export.graph_check import check_onnx
    from shanshui.export.manifest import MANIFEST, open_exported, read_manifest
    from shanshui.fsutil import umask, write_json_atomic
    from shanshui.quantize.fp16 import FP16_BLOCK_OPS, outputs_finite
    from shanshui.quantize.gate import check_quality, enforce

    if precision not in PRECISIONS:
        raise ShanshuiError(f"precision {precision!r} is not available; choose one of {', '.join(PRECISIONS)}")
    src, out = Path(src), limits.new_folder(Path(out))
    source = open_exported(src)
    if source.manifest["precision"] != "fp32":
        raise ShanshuiError(f"{src} is a {source.manifest['precision']} export; quantize from an fp32 export")
    if out.resolve() == src.resolve():
        raise ShanshuiError("IN and OUT are the same folder; choose a new OUT")
    if int8_target not in INT8_TARGETS:
        raise ShanshuiError(f"int8 target {int8_target!r} is not one of {', '.join(INT8_TARGETS)}")
    key = {"precision": precision, "int8_target": int8_target if precision == "int8" else None, "version": FP16_VERSION,
           "check": check, "block_ops": list(FP16_BLOCK_OPS),
           "calibration": [list(CALIBRATION_PROMPTS), list(CALIBRATION_SEEDS), CALIBRATION_STEPS],
           "source": {c: e["key"] for c, e in source.manifest["components"].items()}}
    old = read_manifest(out) if out.is_dir() else None
    if old and old.get("quantize_key") == key and all(component_intact(out, c, e) for c, e in old["components"].items()):
        for c in old["components"]:
            on_event(c, "skip")
        return {**old, "out_dir": str(out)}
    created = not out.exists()  # a refused or failed run removes the OUT it made (see the end)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShanshuiError(f"cannot create {out}: {e.strerror}; choose a writable folder") from None
    remove_stale_temps(out, ["candidate-"])

    manifest = copy.deepcopy(source.manifest)
    manifest.update(precision=precision, quantize_key=key, source_export=str(src.resolve()), quantization={})
    tmp = Path(tempfile.mkdtemp(prefix=".candidate-", dir=out))
    feeds = _LazyFeeds(src, on_event)
    fmt = None
    if precision == "int8":
        from shanshui.quantize.int8 import int8_format

        fmt = int8_format("qdq", "int8", reduce_range=False) if int8_target == "tensorrt" else int8_format("qdq", "uint8")
    try:
        _copy_side_files(src, tmp)
        specs = components(source.dims)
        values = {k: v[1] for k, v in source.shapes.dim_ranges(source.dims).items()}
        for name, entry in manifest["components"].items():
            (tmp / name).mkdir(exist_ok=True)
            shutil.copy2(src / name / "config.json", tmp / name / "config.json")
            convert = functools.partial(_int8_component, feeds=feeds, fmt=fmt) if precision == "int8" else _fp16_component
            files, info = convert(src, tmp, name, entry, on_event)
            if info["precision"] != "fp32" and not outputs_finite(tmp / entry["file"], specs[name].sample_inputs(source.dims, values)):
                for f in files:
                    (tmp / name / f).unlink()
                files, info = _keep_fp32(src, tmp, name, entry, f"{precision} outputs overflowed (inf/nan); kept fp32")
                on_event(name, info["reason"])
            check_onnx(tmp / entry["file"])
            entry["files"], entry["sha256"] = record_files(tmp / name, files)
            manifest["quantization"][name] = info
        manifest["files_bytes"] = {n: sum(e["files"].values()) for n, e in manifest["components"].items()}
        write_json_atomic(tmp / MANIFEST, manifest)  # the candidate is a loadable export from here on
        if check:
            on_event("*", "checking image quality against fp32")
            from shanshui.runtime.backends import default_threads

            manifest["gate"] = check_quality(src, tmp, precision, threads=default_threads())
            enforce(manifest["gate"])
        (out / MANIFEST).unlink(missing_ok=True)  # OUT is incomplete until the new manifest lands
        for name, entry in manifest["components"].items():  # drop files of an older export the new one lacks
            for stale in (out / name).glob("model.onnx*") if (out / name).is_dir() else ():
                if stale.name not in entry["files"]:
                    stale.unlink()
        for path in sorted(tmp.rglob("*"), key=lambda p: (p.name == "model.onnx", str(p))):  # model.onnx last
            if path.is_file() and path.name != MANIFEST:
                dest = out / path.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                path.chmod(0o666 & ~umask())
                path.replace(dest)
        write_json_atomic(out / MANIFEST, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    return {**manifest, "out_dir": str(out)}


def _keep_fp32(src: Path, tmp: Path, name: str, entry: dict, reason: str) -> tuple[list[str], dict]:
    """Copy a component's fp32 files unchanged; the manifest records why."""
    files = list(entry["files"])
    for f in files:
        shutil.copy2(src / name / f, tmp / name / f)
    return files, {"precision": "fp32", "reason": reason}


def _fp16_component(src: Path, tmp: Path, name: str, entry: dict, on_event) -> tuple[list[str], dict]:
    from shanshui.quantize.fp16 import FP16_BLOCK_OPS, convert_fp16

    on_event(name, "converting to fp16")
    return convert_fp16(src / entry["file"], tmp / entry["file"]), {"precision": "fp16", "fp32_ops": list(FP16_BLOCK_OPS)}


# int8 mode, text encoder and VAE decoder: int8 when their own output stays within these floors against fp32 on
# the calibration inputs (measured), else fp16. (output name, compared as images?, floor in dB)
COMPONENT_FLOORS = {"text_encoder": ("last_hidden_state", False, 30.0), "vae_decoder": ("sample", True, 35.0),
                    "vae_encoder": ("latent_parameters", False, 30.0)}


class _LazyFeeds:
    """Calibration inputs of all components, recorded once (on first use) from fp32 sampler runs."""

    def __init__(self, src: Path, on_event):
        self.src, self.on_event, self.feeds = src, on_event, None

    def __getitem__(self, name: str) -> list:
        from shanshui.quantize.int8 import record_feeds

        if self.feeds is None:
            self.on_event("*", f"recording calibration inputs ({len(CALIBRATION_PROMPTS)} prompts × {CALIBRATION_STEPS} steps)")
            from shanshui.runtime.backends import default_threads

            self.feeds = record_feeds(self.src, CALIBRATION_PROMPTS, CALIBRATION_SEEDS, CALIBRATION_STEPS, threads=default_threads())
        return self.feeds[name]


def _int8_component(src: Path, tmp: Path, name: str, entry: dict, on_event, feeds: _LazyFeeds, fmt: dict) -> tuple[list[str], dict]:
    """U-Net: int8 QDQ. Text encoder and VAE decoder: int8 if their measured output quality holds, else fp16."""
    from shanshui.quantize.int8 import output_quality, quantize_int8, quantize_unet_int8

    files = lambda: sorted(p.name for p in (tmp / name).glob("model.onnx*"))  # noqa: E731
    if name == "unet":
        on_event(name, "quantizing to int8 (each layer's own int8 error measured first)")
        info = quantize_unet_int8(src / entry["file"], tmp / entry["file"], feeds[name], fmt)
        return files(), {"precision": "int8", **info}
    output, images, floor = COMPONENT_FLOORS[name]
    on_event(name, "quantizing to int8 and measuring its output against fp32")
    info = quantize_int8(src / entry["file"], tmp / entry["file"], feeds[name], fmt, always_float=())
    quality = output_quality(src / entry["file"], tmp / entry["file"], feeds[name], output, images)
    measure = {"metric": "image PSNR (dB)" if images else "output SNR (dB)", "int8": quality, "floor": floor}
    if quality >= floor:
        return files(), {"precision": "int8", **info, "output_quality": measure}
    for f in files():
        (tmp / name / f).unlink()
    kept, fp16 = _fp16_component(src, tmp, name, entry, on_event)
    return kept, {**fp16, "output_quality": measure,
                  "reason": f"int8 {measure['metric']} {quality} < {floor} against fp32 on the calibration inputs; fp16 instead"}
