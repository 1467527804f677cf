"""`shanshui quantize IN OUT --precision fp16` (and `export --precision`): a lower-precision copy of an fp32 export, gated against it.

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
from shanshui.env import default_threads
from shanshui.errors import ShanshuiError
from shanshui.export.graph_check import check_onnx
from shanshui.export.onnx_export import default_out_dir, export_model
from shanshui.fsutil import make_out_dir, umask, write_json_atomic
from shanshui.integrity import component_intact, record_files, remove_stale_temps
from shanshui.quantize import fp16
from shanshui.quantize.gate import check_quality, enforce
from shanshui.export.split import split_export
from shanshui.quantize.int8 import ALWAYS_FLOAT, int8_format, output_quality, quantize_int8, record_feeds
from shanshui.quantize.streamed import parts_for
from shanshui.runtime.lowmem import BY_NAME, LOW_MEMORY
from shanshui.spec.contract import LAST_HIDDEN_STATE, LATENT_PARAMETERS, SAMPLE, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER
from shanshui.spec.contract import Precision, QuantizePrecision, check_choice, components
from shanshui.spec.manifest import MANIFEST, ExportedModel, open_exported, read_manifest

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
                    on_event: Callable[[str, str], None] = lambda c, e: None, int8_target: str = "cpu",
                    low_memory: bool | None = None) -> dict:
    """Convert the fp32 export at `src` to `precision` into `out`; returns the new manifest.

    int8_target: `cpu` — uint8 activations with zero points (ONNX Runtime's fast u8×s8 kernels); `tensorrt` —
    symmetric int8 activations, the only Q/DQ form TensorRT's explicit quantization takes.
    low_memory (None: when the fp32 U-Net is over 1 GB): int8 in bounded memory — calibration inputs recorded and
    the gate's fp32 images painted with the U-Net streamed in parts, each graph quantized part by part."""
    src, out = Path(src), limits.new_folder(Path(out))
    source, key = _plan(src, out, precision, check, int8_target)
    old = read_manifest(out) if out.is_dir() else None
    if old and old.get("quantize_key") == key and all(component_intact(out, c, e) for c, e in old["components"].items()):
        for c in old["components"]:
            on_event(c, "skip")
        return {**old, "out_dir": str(out)}
    created = not out.exists()  # a run that fails removes the OUT it made (see finally)
    make_out_dir(out)
    remove_stale_temps(out, ["candidate-", "fp32-parts-"])  # of a killed run
    manifest = copy.deepcopy(source.manifest)
    # the source export by folder name only: files we write carry no path of this machine
    manifest.update(precision=precision, quantize_key=key, source_export=src.resolve().name, quantization={})
    tmp = Path(tempfile.mkdtemp(prefix=".candidate-", dir=out))
    bounded = _bounded(source, low_memory)
    streamed = _streamed_copy(src, out, bounded)  # the fp32 export with its U-Net cut into parts, hard-linked
    try:
        _copy_side_files(src, tmp)
        feeds = _LazyFeeds(streamed or src, on_event, BY_NAME["streamed"] if streamed else None)
        _convert_components(source, tmp, manifest, precision, int8_target, on_event, feeds, bounded)
        manifest["files_bytes"] = {n: sum(e["files"].values()) for n, e in manifest["components"].items()}
        write_json_atomic(tmp / MANIFEST, manifest)  # the candidate is a loadable export from here on
        if check:
            on_event("*", "checking image quality against fp32")
            memory = (BY_NAME["streamed"], LOW_MEMORY) if streamed else (None, None)
            manifest["gate"] = check_quality(streamed or src, tmp, precision, threads=default_threads(), memory=memory)
            enforce(manifest["gate"])
        _commit(tmp, out, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if streamed:
            shutil.rmtree(streamed.parent, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    return {**manifest, "out_dir": str(out)}


def _bounded(source: ExportedModel, low_memory: bool | None) -> bool:
    return parts_for(source.onnx_path("unet")) > 1 if low_memory is None else bool(low_memory)


def _streamed_copy(src: Path, out: Path, bounded: bool) -> Path | None:
    """For a bounded-memory conversion, the fp32 export with its U-Net also cut into parts (graph-only, files
    hard-linked; removed at the end), to paint fp32 images with the `streamed` low-memory strategy."""
    if not bounded:
        return None
    work = Path(tempfile.mkdtemp(prefix=".fp32-parts-", dir=out))
    split_export(src, work / "export", parts=max(2, parts_for(open_exported(src).onnx_path("unet"))))
    return work / "export"


def _plan(src: Path, out: Path, precision: str, check: bool, int8_target: str) -> tuple[ExportedModel, dict]:
    """Validate the request (before any work) and the cache key that says whether OUT is already this conversion."""
    check_choice("precision", precision, QuantizePrecision)
    source = open_exported(src)
    if source.manifest["precision"] != "fp32":
        raise ShanshuiError(f"{src} is a {source.manifest['precision']} export; quantize from an fp32 export")
    if out.resolve() == src.resolve():
        raise ShanshuiError("IN and OUT are the same folder; choose a new OUT")
    if int8_target not in INT8_TARGETS:
        raise ShanshuiError(f"int8 target {int8_target!r} is not one of {', '.join(INT8_TARGETS)}")
    key = {"precision": precision, "int8_target": int8_target if precision == "int8" else None, "version": FP16_VERSION,
           "check": check, "block_ops": list(fp16.FP16_BLOCK_OPS),
           "calibration": [list(CALIBRATION_PROMPTS), list(CALIBRATION_SEEDS), CALIBRATION_STEPS],
           "source": {c: e["key"] for c, e in source.manifest["components"].items()}}
    return source, key


def _convert_components(source: ExportedModel, tmp: Path, manifest: dict, precision: str, int8_target: str, on_event,
                        feeds, bounded: bool = False) -> None:
    """Each component into `tmp`, checked for finite outputs (fp32 kept where the lower precision overflows)."""
    src = source.root
    fmt = None
    if precision == "int8":
        fmt = int8_format("qdq", "int8", reduce_range=False) if int8_target == "tensorrt" else int8_format("qdq", "uint8")
    specs = components(source.dims)
    values = {k: v[1] for k, v in source.shapes.dim_ranges(source.dims).items()}
    for name, entry in manifest["components"].items():
        (tmp / name).mkdir(exist_ok=True)
        shutil.copy2(src / name / "config.json", tmp / name / "config.json")
        convert = (functools.partial(_int8_component, feeds=feeds, fmt=fmt, bounded=bounded) if precision == "int8"
                   else _fp16_component)
        files, info = convert(src, tmp, name, entry, on_event)
        if info["precision"] != "fp32" and not fp16.outputs_finite(tmp / entry["file"], specs[name].sample_inputs(source.dims, values)):
            for f in files:
                (tmp / name / f).unlink()
            files, info = _keep_fp32(src, tmp, name, entry, f"{precision} outputs overflowed (inf/nan); kept fp32")
            on_event(name, info["reason"])
        check_onnx(tmp / entry["file"])
        entry["files"], entry["sha256"] = record_files(tmp / name, files)
        manifest["quantization"][name] = info


def _commit(tmp: Path, out: Path, manifest: dict) -> None:
    """Move the checked candidate into OUT: its manifest removed first and written last."""
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


def export_at(model_dir: Path, out_dir: Path | None = None, precision: str = "fp32", height: int | None = None,
              width: int | None = None, max_batch: int = 4, on_event: Callable[[str, str], None] = lambda c, e: None,
              check: bool = True, int8_target: str = "cpu") -> dict:
    """`shanshui export --precision`: fp32 is export_model's; fp16 and int8 are made from an fp32 export kept in
    OUT/.fp32 (the quality gate's reference), then quantized into OUT. Returns the manifest."""
    check_choice("precision", precision, Precision)
    if precision == Precision.fp32.value:
        return export_model(model_dir, out_dir, precision, height, width, max_batch, on_event)
    out = Path(out_dir) if out_dir is not None else default_out_dir(Path(model_dir), precision)
    export_model(model_dir, out / ".fp32", "fp32", height, width, max_batch, on_event)
    return quantize_export(out / ".fp32", out, precision, check=check, on_event=on_event, int8_target=int8_target)


def _keep_fp32(src: Path, tmp: Path, name: str, entry: dict, reason: str) -> tuple[list[str], dict]:
    """Copy a component's fp32 files unchanged; the manifest records why."""
    files = list(entry["files"])
    for f in files:
        shutil.copy2(src / name / f, tmp / name / f)
    return files, {"precision": "fp32", "reason": reason}


def _fp16_component(src: Path, tmp: Path, name: str, entry: dict, on_event) -> tuple[list[str], dict]:
    on_event(name, "converting to fp16")
    return fp16.convert_fp16(src / entry["file"], tmp / entry["file"]), {"precision": "fp16", "fp32_ops": list(fp16.FP16_BLOCK_OPS)}


# int8 mode, text encoder and VAE decoder: int8 when their own output stays within these floors against fp32 on
# the calibration inputs (measured), else fp16. (output name, compared as images?, floor in dB)
COMPONENT_FLOORS = {TEXT_ENCODER: (LAST_HIDDEN_STATE, False, 30.0), VAE_DECODER: (SAMPLE, True, 35.0),
                    VAE_ENCODER: (LATENT_PARAMETERS, False, 30.0)}


class _LazyFeeds:
    """Calibration inputs of all components, recorded once (on first use) from fp32 sampler runs (painted with the
    low-memory strategy `memory` when given)."""

    def __init__(self, src: Path, on_event, memory=None):
        self.src, self.on_event, self.memory, self.feeds = src, on_event, memory, None

    def __getitem__(self, name: str) -> list:
        if self.feeds is None:
            self.on_event("*", f"recording calibration inputs ({len(CALIBRATION_PROMPTS)} prompts × {CALIBRATION_STEPS} steps)")
            self.feeds = record_feeds(self.src, CALIBRATION_PROMPTS, CALIBRATION_SEEDS, CALIBRATION_STEPS,
                                      threads=default_threads(), memory=self.memory)
        return self.feeds[name]


# bounded memory: graphs quantized in parts; the VAE's activations at full resolution are its large part
BOUNDED_MIN_PARTS = {"unet": 2, "text_encoder": 2, "vae_decoder": 4, "vae_encoder": 4}


def _int8_component(src: Path, tmp: Path, name: str, entry: dict, on_event, feeds: _LazyFeeds, fmt: dict,
                    bounded: bool = False) -> tuple[list[str], dict]:
    """U-Net: int8 QDQ. Text encoder and VAE decoder: int8 if their measured output quality holds, else fp16."""
    files = lambda: sorted(p.name for p in (tmp / name).glob("model.onnx*"))  # noqa: E731
    parts = max(BOUNDED_MIN_PARTS.get(name, 1), parts_for(src / entry["file"])) if bounded else 1
    event = lambda e: on_event(name, e)  # noqa: E731
    if name == "unet":
        on_event(name, "quantizing to int8 (each layer's own int8 error measured first)")
        info = quantize_int8(src / entry["file"], tmp / entry["file"], feeds[name], fmt, always_float=ALWAYS_FLOAT,
                             parts=parts, on_event=event)
        return files(), {"precision": "int8", **info}
    output, images, floor = COMPONENT_FLOORS[name]
    on_event(name, "quantizing to int8 and measuring its output against fp32")
    info = quantize_int8(src / entry["file"], tmp / entry["file"], feeds[name], fmt, always_float=(), parts=parts,
                         on_event=event)
    quality = output_quality(src / entry["file"], tmp / entry["file"], feeds[name], output, images)
    measure = {"metric": "image PSNR (dB)" if images else "output SNR (dB)", "int8": quality, "floor": floor}
    if quality >= floor:
        return files(), {"precision": "int8", **info, "output_quality": measure}
    for f in files():
        (tmp / name / f).unlink()
    kept, fp16 = _fp16_component(src, tmp, name, entry, on_event)
    return kept, {**fp16, "output_quality": measure,
                  "reason": f"int8 {measure['metric']} {quality} < {floor} against fp32 on the calibration inputs; fp16 instead"}
