"""The engine folder: build TensorRT engines from an export (or reuse cached ones), and refuse stale ones.

Layout (default: EXPORT/engines):
    engines.json                     what each engine is: its cache key, file, ONNX fingerprint, build time
    <component>-<key id>.plan        serialized engines, one per component
    timing-<env id>.cache            TensorRT's timing cache for this TensorRT version and GPU
A cache key holds the ONNX files' sha256, precision, build mode, shape profiles, the TensorRT version and the GPU
(name and compute capability). Engines land by rename and engines.json is rewritten after each one, so an interrupted
build never leaves a half-written engine that looks complete. Pure Python: the builder and the environment
(TensorRT version, GPU) are passed in, by default from shanshui.engines.trt.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from shanshui.engines.plan import (
    BUILD_VERSION, TRT_ALTERNATIVE, Builder, EngineBuild, describe_change, engine_key, gpu_label, key_id, network_mode, parse_buckets, profiles,
    shapes_label,
)
from shanshui.errors import ShanshuiError
from shanshui.spec.contract import COMPONENTS, components
from shanshui.spec.engine_manifest import ENGINE_MANIFEST, FORMAT_VERSION, read_engine_manifest
from shanshui.spec.manifest import ExportedModel, open_exported
from shanshui.fsutil import sha256_files, write_bytes_atomic, write_json_atomic
from shanshui.engines import trt

ORT_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "DynamicQuantizeLinear"}


def default_engine_dir(export_root: Path) -> Path:
    return Path(export_root) / "engines"


def onnx_files(exported: ExportedModel, component: str) -> list[Path]:
    """model.onnx and its external data files, in a fixed order."""
    entry = exported.manifest["components"][component]
    folder = (exported.root / entry["file"]).parent
    return [folder / f for f in sorted(entry["files"])]


def fingerprint(paths: list[Path], previous: dict | None = None) -> dict:
    """sha256 over the files; reused from `previous` while every file keeps its inode, size and mtime."""
    try:
        stat = [[p.name, p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    except FileNotFoundError as e:
        raise ShanshuiError(f"{e.filename} is missing; re-run `shanshui export` to complete the folder") from None
    if previous and previous.get("stat") == stat and previous.get("sha256"):
        return {"sha256": previous["sha256"], "stat": stat}
    return {"sha256": sha256_files(paths), "stat": stat}


def env_id(env: dict) -> str:
    return key_id({"tensorrt": env["tensorrt"], "gpu": env["gpu"]})[:12]


def check_qdq_for_tensorrt(path: Path) -> None:
    """TensorRT takes symmetric int8 Q/DQ only: refuse uint8 or non-zero zero points before a long build fails."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # no onnx to look with: TensorRT's parser will say it instead
        return
    model = onnx.load(str(path), load_external_data=False)
    ort_only = sorted({n.op_type for n in model.graph.node if n.op_type in ORT_INTEGER_OPS})
    if ort_only:
        raise ShanshuiError(f"{path} is a QOperator int8 graph ({', '.join(ort_only)}: ONNX Runtime-only operators); "
                            f"TensorRT builds int8 from QDQ exports with int8 activations, or use --precision fp16")
    inits = {i.name: i for i in model.graph.initializer}
    bad = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_location == onnx.TensorProto.EXTERNAL:
            continue
        arr = numpy_helper.to_array(zp)
        bad += int(arr.dtype != np.int8 or bool(np.any(arr != 0)))
    if bad:
        raise ShanshuiError(f"{path} has {bad} Q/DQ nodes with uint8 types or non-zero zero points (ONNX Runtime's CPU form); "
                            f"TensorRT takes symmetric int8 Q/DQ only: export with `--precision int8 --int8-target tensorrt`, "
                            f"or build --precision fp16 from the fp32 or an fp16 export")


def modes(exported: ExportedModel, precision: str, trt_major: int) -> dict[str, dict]:
    """plan.network_mode of each component of this export; raises where the precision cannot be built from it."""
    export_precision = exported.manifest["precision"]
    quantization = exported.manifest.get("quantization", {})
    return {c: network_mode(precision, export_precision, quantization.get(c, {}).get("precision", export_precision), trt_major)
            for c in COMPONENTS}


def plan_builds(exported: ExportedModel, precision: str, buckets: list, dynamic: bool, env: dict,
                old: dict | None = None, workspace_bytes: int | None = None) -> list[tuple[EngineBuild, dict, dict]]:
    """(what to build, cache key, ONNX fingerprint) per component; raises on a bad precision before any build."""
    dims, settings = exported.dims, exported.shapes
    specs = components(dims)
    mode_of = modes(exported, precision, int(str(env["tensorrt"]).split(".")[0]))
    out = []
    for comp in COMPONENTS:
        mode = mode_of[comp]
        paths = onnx_files(exported, comp)
        prev = ((old or {}).get("components") or {}).get(comp) or {}
        fp = fingerprint(paths, prev.get("onnx"))
        profs = profiles(specs[comp], dims, settings, buckets, dynamic)
        key = engine_key(comp, fp["sha256"], precision, mode, profs, env)
        out.append((EngineBuild(comp, exported.onnx_path(comp), profs, mode, workspace_bytes), key, fp))
    return out


def build_engines(export_dir: Path, out_dir: Path | None = None, precision: str = "fp16", shapes: str | None = None,
                  dynamic: bool = False, workspace_bytes: int | None = None,
                  on_event: Callable[[str, str], None] = lambda component, what: None,
                  env: dict | None = None, builder: Builder | None = None) -> dict:
    """Build (or reuse) the three engines of an export; returns engines.json's content plus `out_dir`."""
    exported = open_exported(export_dir)
    buckets = parse_buckets(shapes, exported.dims, exported.shapes)  # shape and precision errors come before
    modes(exported, precision, trt_major=10)  # TensorRT is even looked for (10: the most permissive version)
    label = shapes_label(buckets, dynamic)
    if env is None or builder is None:

        env = env or trt.environment()
        builder = builder or trt.build_engine
    out = Path(out_dir) if out_dir is not None else default_engine_dir(exported.root)
    if out.exists() and not out.is_dir():
        raise ShanshuiError(f"{out} exists and is not a folder; choose another --out")
    old = read_engine_manifest(out) if out.is_dir() else None
    builds = plan_builds(exported, precision, buckets, dynamic, env, old, workspace_bytes)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShanshuiError(f"cannot create {out}: {e.strerror}; choose a writable --out") from None
    manifest = {"format_version": FORMAT_VERSION, "export": str(exported.root.resolve()), "precision": precision,
                "shapes": label, "tensorrt": env["tensorrt"], "gpu": env["gpu"],
                "components": dict((old or {}).get("components") or {})}
    timing_cache = out / f"timing-{env_id(env)}.cache"
    for spec, key, fp in builds:
        comp = spec.component
        prev = manifest["components"].get(comp)
        if prev and prev.get("key") == key and (out / prev["file"]).is_file() and (out / prev["file"]).stat().st_size == prev.get("bytes"):
            manifest["components"][comp] = {**prev, "shapes": label, "onnx": {"files": [p.name for p in onnx_files(exported, comp)], **fp}}
            on_event(comp, "cached, reused")
            continue
        why = describe_change(prev and prev.get("key"), key, prev and prev.get("shapes"), label)
        on_event(comp, f"building {precision} engine for {label} ({why})…")
        if spec.mode["graph"] == "int8":
            check_qdq_for_tensorrt(spec.onnx_path)
        t0 = time.perf_counter()
        data = builder(spec.onnx_path, spec, timing_cache)
        file = f"{comp}-{key_id(key)}.plan"
        write_bytes_atomic(out / file, data)
        manifest["components"][comp] = {
            "file": file, "bytes": len(data), "shapes": label, "key": key, "key_id": key_id(key),
            "onnx": {"files": [p.name for p in onnx_files(exported, comp)], **fp},
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        write_json_atomic(out / ENGINE_MANIFEST, manifest)  # after each engine: an interrupted build keeps what it made
        on_event(comp, f"done in {time.perf_counter() - t0:.1f} s")
    write_json_atomic(out / ENGINE_MANIFEST, manifest)
    keep = {e["file"] for e in manifest["components"].values()}
    for stale in out.glob("*.plan"):
        if stale.name not in keep:
            stale.unlink()
    return {**manifest, "out_dir": str(out)}


def check_engines(exported: ExportedModel, env: dict, engine_dir: Path | None = None) -> tuple[dict[str, Path], dict]:
    """The engine files for this export on this machine, or a one-line error saying why they cannot run here."""
    folder = Path(engine_dir) if engine_dir is not None else default_engine_dir(exported.root)
    rebuild = f"`shanshui engine build {exported.root}`"
    m = read_engine_manifest(folder) if folder.is_dir() else None
    if m is None:
        raise ShanshuiError(f"no TensorRT engines in {folder}: build them with {rebuild}, {TRT_ALTERNATIVE}")
    comps = m.get("components") or {}
    for comp in COMPONENTS:
        if comp not in comps or not (folder / comps[comp]["file"]).is_file():
            raise ShanshuiError(f"{folder} has no {comp} engine (an interrupted build?): run {rebuild} again, {TRT_ALTERNATIVE}")
    if len({(e["key"]["precision"], e.get("shapes")) for e in comps.values()}) > 1:
        raise ShanshuiError(f"the engines in {folder} were built with different settings (an interrupted build?): "
                            f"run {rebuild} again")
    for comp in COMPONENTS:
        entry = comps[comp]
        fp = fingerprint(onnx_files(exported, comp), entry.get("onnx"))
        here = {**entry["key"], "build_version": BUILD_VERSION, "onnx_sha256": fp["sha256"], "tensorrt": env["tensorrt"],
                "gpu": env["gpu"]}
        if here != entry["key"]:
            raise ShanshuiError(f"the {comp} engine in {folder} is stale ({describe_change(entry['key'], here)}): "
                                f"rebuild with {rebuild}, {TRT_ALTERNATIVE}")
    return {comp: folder / comps[comp]["file"] for comp in COMPONENTS}, m


def describe(manifest: dict) -> list[str]:
    """One line per engine, for `shanshui engine build` and `engine info`."""
    lines = []
    for comp, e in manifest["components"].items():
        k = e["key"]
        graph = k["mode"]["graph"] + ("+fp16 kernels" if k["mode"]["fp16_flag"] else "")
        lines.append(f"  {comp:13s} {k['precision']:5s} {e['bytes'] / 1e6:8.1f} MB  graph {graph:16s} shapes {e.get('shapes')}  "
                     f"TensorRT {k['tensorrt']} on {gpu_label(k['gpu'])}")
    return lines
