"""`shanshui export`: text encoder, U-Net and VAE decoder of a diffusers folder to ONNX, checked against PyTorch.

Layout of the output (the one Optimum and the TensorRT diffusion demo recognise):
    OUT/model_index.json  scheduler/  tokenizer/  shanshui_manifest.json
    OUT/text_encoder/model.onnx  OUT/unet/model.onnx (+ model.onnx.data when > 2 GB)  OUT/vae_decoder/model.onnx
Every file lands by rename; the manifest is written last, so a component counts as exported only once its files
are complete and checked. Re-running skips components whose source hash and settings are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.export.graph_check import check_onnx
from shanshui.export.tokenizer_files import is_clip_bpe, write_tokenizer_folder
from shanshui.fsutil import make_out_dir, read_json, umask, write_json_atomic
from shanshui.integrity import component_intact, record_files, remove_stale_temps
from shanshui.hf import load_component, require_torch
from shanshui.onnxrt import ort_session
from shanshui.runtime.schedules import portable_config
from shanshui.runtime.tokenizer import open_tokenizer
from shanshui.spec.clip_bpe import special_tokens
from shanshui.spec.contract import INPUT_IDS, SOURCE_FOLDER, TEXT_ENCODER, ComponentSpec, Precision, ShapeSettings
from shanshui.spec.contract import components, parity_error
from shanshui.spec.manifest import FORMAT_VERSION, MANIFEST, read_manifest
from shanshui.spec.source import SourceModel, model_resolution, open_source, source_ref

OPSET = 17
TWO_GB = 2**31


def _check_values(spec: ComponentSpec, source: SourceModel, shapes: ShapeSettings) -> list[dict[str, int]]:
    """Two shapes to check at: the optimum, and a second one that exercises the dynamic axes."""
    r = shapes.dim_ranges(source.dims)
    opt = {k: v[1] for k, v in r.items()}
    m = source.dims.size_multiple
    other_h = max(r["H"][0], shapes.height - m) if shapes.height - m >= r["H"][0] else shapes.height + m
    other = {"B2": 4, "B": 2, "H": other_h, "W": shapes.width, "h": other_h // source.dims.vae_scale, "w": opt["w"]}
    if spec.name == "text_encoder":
        other = {**opt, "B2": 3}
    return [opt, other]


PARITY_PROMPTS = ("一棵青松，青山环绕，云雾缭绕", "a fishing boat on a misty river at dusk", "", "秋山红叶，凉亭", "snowy peaks, ink wash")


def _prompt_ids(source: SourceModel, fallback: np.ndarray, seed: int) -> np.ndarray:
    """Token ids of real prompts, shaped like `fallback` (B2, L), when the model has a tokenizer.json.

    Random ids are a poor parity input for a trained text encoder: sequences no tokenizer makes (padding inside,
    never-trained tokens) drive attention into regimes where rounding differences grow ~10× per layer.
    """
    try:
        tok = open_tokenizer(source.root / "tokenizer", fallback.shape[1])
    except ShanshuiError:
        return fallback
    prompts = [PARITY_PROMPTS[(seed + j) % len(PARITY_PROMPTS)] for j in range(fallback.shape[0])]
    ids = tok(prompts)[0]
    return ids if ids.shape == fallback.shape else fallback


def _export_component(spec: ComponentSpec, source: SourceModel, shapes: ShapeSettings, folder: Path) -> dict:
    """Export one component into `folder` (a temp dir), check it, and return its manifest entry (minus the key)."""
    import onnx
    import torch

    module = load_component(source, spec.name)
    checks = _check_values(spec, source, shapes)
    example = {k: torch.from_numpy(v) for k, v in spec.sample_inputs(source.dims, checks[0]).items()}
    raw = folder / "raw" / "model.onnx"
    raw.parent.mkdir()
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape asserts that are constant for a given model
        torch.onnx.export(
            module, tuple(example.values()), str(raw), input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(), opset_version=OPSET,
            do_constant_folding=True, dynamo=False,
        )
    # The TorchScript exporter scatters > 2 GB models into one file per tensor: gather them into one data file.
    final = folder / "model.onnx"
    raw_bytes = sum(p.stat().st_size for p in raw.parent.iterdir())
    if raw_bytes >= TWO_GB:
        proto = onnx.load(str(raw))
        onnx.save(proto, str(final), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
        del proto
    else:
        raw.rename(final)
    shutil.rmtree(raw.parent)
    check_onnx(final)
    export_s = time.perf_counter() - t0

    errors = _check_parity(spec, source, module, ort_session(final), checks)
    del module
    sizes, hashes = record_files(folder, sorted(p.name for p in folder.iterdir()))
    return {
        "file": f"{spec.name}/model.onnx",
        "files": sizes,
        "sha256": hashes,
        "inputs": [asdict(t) for t in spec.inputs],
        "outputs": [asdict(t) for t in spec.outputs],
        "profile": {k: [list(s) for s in v] for k, v in spec.profile(source.dims, shapes).items()},
        "parity": errors,
        "export_seconds": round(export_s, 2),
    }


def _check_parity(spec: ComponentSpec, source: SourceModel, module, session, checks: list[dict[str, int]]) -> list[dict]:
    """Run the ONNX session and the PyTorch module on the same inputs at each check shape; raise past the tolerance."""
    import torch

    errors = []
    for i, values in enumerate(checks):
        feeds = spec.sample_inputs(source.dims, values, seed=i)
        if spec.name == TEXT_ENCODER:
            feeds[INPUT_IDS] = _prompt_ids(source, feeds[INPUT_IDS], seed=i)
        with torch.no_grad():
            ref = module(*[torch.from_numpy(v) for v in feeds.values()])
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        got = session.run([t.name for t in spec.outputs], feeds)
        for t, g, r in zip(spec.outputs, got, ref):
            if g.shape != r.shape:
                raise ShanshuiError(f"{spec.name}.{t.name}: ONNX shape {g.shape} != PyTorch {r.shape} at {values}")
            err, scale = parity_error(g, r)
            allowed = spec.atol + spec.rtol * scale
            if not np.isfinite(err) or err > allowed:
                raise ShanshuiError(
                    f"{spec.name}.{t.name}: ONNX differs from PyTorch by {err:.3g} (allowed {allowed:.3g}) at shape "
                    f"{g.shape}; the export is wrong, nothing was written"
                )
            errors.append({"output": t.name, "shape": list(g.shape), "max_abs_error": err, "allowed": allowed})
    return errors


def _copy_side_files(source: SourceModel, out: Path) -> dict:
    """Scheduler, tokenizer (tokenizer.json for the runtime; CLIP's BPE files as well, see tokenizer_files) and configs."""
    for sub in ("scheduler", "tokenizer"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scheduler" / "scheduler_config.json", portable_config(source.scheduler))
    tok_src = source.root / "tokenizer"
    tok_cfg = read_json(tok_src / "tokenizer_config.json")
    index = read_json(source.root / "model_index.json")
    write_tokenizer_folder(tok_src, out / "tokenizer", index)  # CLIP: vocab.json + merges.txt and tokenizer.json
    if is_clip_bpe(out / "tokenizer", index):
        tok_cfg = {**special_tokens(out / "tokenizer"), **tok_cfg}
    pad = tok_cfg.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    tok = json.loads((out / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab.update(tok.get("model", {}).get("vocab", {}) if isinstance(tok.get("model", {}).get("vocab"), dict) else {})
    if pad not in vocab:
        raise ShanshuiError(f"tokenizer pad token {pad!r} is not in its vocabulary; fix {tok_src}/tokenizer_config.json")
    for comp, src in SOURCE_FOLDER.items():  # Optimum reads a config.json in each component folder
        (out / comp).mkdir(exist_ok=True)
        shutil.copy2(source.root / src / "config.json", out / comp / "config.json")
    shutil.copy2(source.root / "model_index.json", out / "model_index.json")
    return {"max_length": source.dims.text_len, "pad_token": pad, "pad_id": int(vocab[pad])}


def default_out_dir(model_dir: Path, precision: str) -> Path:
    return Path.cwd() / f"{Path(model_dir).name}-onnx-{precision}"


def export_model(
    model_dir: Path,
    out_dir: Path | None = None,
    precision: str = "fp32",
    height: int | None = None,
    width: int | None = None,
    max_batch: int = 4,
    on_event: Callable[[str, str], None] = lambda component, what: None,
) -> dict:
    """Export (or reuse) every component in fp32; returns the manifest. `on_event(component, 'skip'|'export'|'done')`.

    fp16 and int8 are made from an fp32 export by shanshui.quantize.convert.export_at.
    """
    if precision != Precision.fp32.value:
        raise ShanshuiError(f"export_model writes fp32; {precision} comes from quantize.convert.export_at")
    source, shapes, out, hashes = _plan(model_dir, out_dir, height, width, max_batch)
    old = read_manifest(out) or {}
    specs = components(source.dims)
    keys = {n: {"source_hash": hashes[n], "precision": precision, "opset": OPSET, "shapes": asdict(shapes)} for n in specs}

    def still_valid(name: str) -> bool:
        prev = old.get("components", {}).get(name)
        return bool(prev) and prev.get("key") == keys[name] and component_intact(out, name, prev)

    manifest = {
        "format_version": FORMAT_VERSION,
        "precision": precision,
        "opset": OPSET,
        "source": {"path": source_ref(source.root, out), "hashes": hashes},
        "dims": asdict(source.dims),
        "shapes": asdict(shapes),
        "vae_scaling_factor": source.vae_scaling_factor,
        "tokenizer": _copy_side_files(source, out),
        "components": {n: old["components"][n] for n in specs if still_valid(n)},
    }
    for name, spec in specs.items():
        if name in manifest["components"]:
            on_event(name, "skip")
            continue
        on_event(name, "export")
        entry = _export_into(spec, source, shapes, out, manifest)
        entry["key"] = keys[name]
        manifest["components"][name] = entry
        write_json_atomic(out / MANIFEST, manifest)
        on_event(name, "done")
    manifest["files_bytes"] = {n: sum(e["files"].values()) for n, e in manifest["components"].items()}
    write_json_atomic(out / MANIFEST, manifest)
    manifest["out_dir"] = str(out)
    return manifest


def _plan(model_dir: Path, out_dir: Path | None, height: int | None, width: int | None,
          max_batch: int) -> tuple[SourceModel, ShapeSettings, Path, dict[str, str]]:
    """Check the options, the source folder (its weights: safetensors, whole) and OUT before anything heavy is
    loaded or OUT is made; returns the source's component hashes too. Stale temps of a killed export are removed."""
    limits.check_export(height, width, max_batch)
    source = open_source(model_dir)
    res = model_resolution(source.root)
    h, w = (res if height is None else height), (res if width is None else width)
    shapes = ShapeSettings(height=h, width=w, min_size=min(128, h, w), max_size=max(1024, h, w), max_batch=max_batch)
    shapes.check(source.dims)
    out = limits.new_folder(Path(out_dir) if out_dir is not None else default_out_dir(source.root, Precision.fp32.value))
    hashes = {name: source.component_hash(SOURCE_FOLDER[name]) for name in components(source.dims)}  # refuses pickles
    require_torch()
    make_out_dir(out)
    remove_stale_temps(out, [*components(source.dims), MANIFEST])
    return source, shapes, out, hashes


def _export_into(spec: ComponentSpec, source: SourceModel, shapes: ShapeSettings, out: Path, manifest: dict) -> dict:
    """Export one component in a temp folder inside OUT, then rename its files into OUT/<component>/."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out))
    try:
        entry = _export_component(spec, source, shapes, tmp)
        # the manifest never lists a component while its files are being replaced
        write_json_atomic(out / MANIFEST, manifest)
        dest = out / spec.name
        for f in sorted(entry["files"], key=lambda f: f == "model.onnx"):  # data first, model.onnx last
            os.chmod(tmp / f, 0o666 & ~umask())  # onnx writes external data as 0600
            (tmp / f).replace(dest / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
