"""`shanshui export`: text encoder, U-Net and VAE decoder of a diffusers folder to ONNX, checked against PyTorch.

Layout of the output (the one Optimum and the TensorRT diffusion demo recognise):
    OUT/model_index.json  scheduler/  tokenizer/  shanshui_manifest.json
    OUT/text_encoder/model.onnx  OUT/unet/model.onnx (+ model.onnx.data when > 2 GB)  OUT/vae_decoder/model.onnx
Every file lands by rename; the manifest is written last, so a component counts as exported only once its files
are complete and checked. Re-running skips components whose source hash and settings are unchanged.
"""

from __future__ import annotations

import enum
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

from shanshui.errors import ShanshuiError
from shanshui.export.contract import ComponentSpec, ShapeSettings, components, parity_error
from shanshui.export.graph_check import check_onnx
from shanshui.export.manifest import FORMAT_VERSION, MANIFEST, read_manifest
from shanshui.export.source import SourceModel, model_resolution, open_source, read_json
from shanshui.export.tokenizer_files import is_clip_bpe, write_tokenizer_folder
from shanshui import limits
from shanshui.fsutil import umask, write_json_atomic
from shanshui.integrity import component_intact, record_files, remove_stale_temps
from shanshui.runtime.clip_bpe import special_tokens

OPSET = 17
TWO_GB = 2**31
SOURCE_FOLDER = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae", "vae_encoder": "vae"}


class Precision(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def _require_torch():
    try:
        import diffusers  # noqa: F401
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ShanshuiError(f"export needs the torch extra ({e.name} is missing): pip install 'shanshui[torch]'") from None
    quiet_hf()


def quiet_hf() -> None:
    """No per-file progress bars or info logs from transformers/diffusers in our output."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def _load_module(source: SourceModel, name: str):
    """The PyTorch module for a component, wrapped so that it returns exactly the contract's outputs."""
    import diffusers
    import torch
    import transformers

    from shanshui.weights import load_strict

    index = read_json(source.root / "model_index.json")
    folder = source.root / SOURCE_FOLDER[name]
    if name == "text_encoder":
        cls = getattr(transformers, index.get("text_encoder", [None, "CLIPTextModel"])[1] or "CLIPTextModel")
        model = load_strict(cls, folder, "text encoder", use_safetensors=True, torch_dtype=torch.float32)

        class TextEncoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):  # (B2, L) int64
                out = self.m(input_ids, return_dict=True)
                return out.last_hidden_state, out.pooler_output  # (B2, L, D), (B2, D)

        return TextEncoder(model).eval()
    if name == "unet":
        model = load_strict(diffusers.UNet2DConditionModel, folder, "U-Net", use_safetensors=True, torch_dtype=torch.float32)

        class UNet(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, sample, timestep, encoder_hidden_states):  # (B2, C, h, w), (B2,), (B2, L, D)
                return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # (B2, C, h, w)

        return UNet(model).eval()
    model = load_strict(diffusers.AutoencoderKL, folder, "VAE", use_safetensors=True, torch_dtype=torch.float32)
    if name == "vae_encoder":
        from shanshui.export.vae_encoder import VaeEncoder

        return VaeEncoder(model).eval()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent_sample):  # (B, C, h, w), already divided by scaling_factor
            return self.m.decode(latent_sample, return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]

    return VaeDecoder(model).eval()


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
    from shanshui.runtime.tokenizer import open_tokenizer

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
    import onnxruntime as ort
    import torch

    module = _load_module(source, spec.name)
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

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(final), opts, providers=["CPUExecutionProvider"])
    errors = []
    for i, values in enumerate(checks):
        feeds = spec.sample_inputs(source.dims, values, seed=i)
        if spec.name == "text_encoder":
            feeds["input_ids"] = _prompt_ids(source, feeds["input_ids"], seed=i)
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
    del session, module
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


def _copy_side_files(source: SourceModel, out: Path) -> dict:
    """Scheduler, tokenizer (tokenizer.json for the runtime; CLIP's BPE files as well, see tokenizer_files) and configs."""
    for sub in ("scheduler", "tokenizer"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    from shanshui.runtime.schedules import portable_config

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
    check: bool = True,
    int8_target: str = "cpu",
) -> dict:
    """Export (or reuse) every component; returns the manifest. `on_event(component, 'skip'|'export'|'done')`.

    Lower precisions are made from an fp32 export kept in OUT/.fp32 (the quality gate's reference).
    """
    if precision not in {p.value for p in Precision}:
        raise ShanshuiError(f"precision {precision!r} is not available; choose one of {', '.join(p.value for p in Precision)}")
    limits.check_export(height, width, max_batch)
    if precision != Precision.fp32.value:
        from shanshui.quantize import quantize_export

        out = Path(out_dir) if out_dir is not None else default_out_dir(Path(model_dir), precision)
        export_model(model_dir, out / ".fp32", "fp32", height, width, max_batch, on_event)
        return quantize_export(out / ".fp32", out, precision, check=check, on_event=on_event, int8_target=int8_target)
    source = open_source(model_dir)
    res = model_resolution(source.root)
    h, w = (res if height is None else height), (res if width is None else width)
    shapes = ShapeSettings(height=h, width=w, min_size=min(128, h, w), max_size=max(1024, h, w), max_batch=max_batch)
    shapes.check(source.dims)
    out = limits.new_folder(Path(out_dir) if out_dir is not None else default_out_dir(source.root, precision))
    specs = components(source.dims)
    hashes = {name: source.component_hash(SOURCE_FOLDER[name]) for name in specs}  # refuses pickles, cut files
    _require_torch()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShanshuiError(f"cannot create {out}: {e.strerror}; choose a writable folder") from None
    remove_stale_temps(out, [*specs, MANIFEST])
    old = read_manifest(out) or {}
    keys = {n: {"source_hash": hashes[n], "precision": precision, "opset": OPSET, "shapes": asdict(shapes)} for n in specs}

    def still_valid(name: str) -> bool:
        prev = old.get("components", {}).get(name)
        return bool(prev) and prev.get("key") == keys[name] and component_intact(out, name, prev)

    manifest = {
        "format_version": FORMAT_VERSION,
        "precision": precision,
        "opset": OPSET,
        "source": {"path": str(source.root.resolve()), "hashes": hashes},
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
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
        try:
            entry = _export_component(spec, source, shapes, tmp)
            # the manifest never lists a component while its files are being replaced
            write_json_atomic(out / MANIFEST, manifest)
            dest = out / name
            for f in sorted(entry["files"], key=lambda f: f == "model.onnx"):  # data first, model.onnx last
                os.chmod(tmp / f, 0o666 & ~umask())  # onnx writes external data as 0600
                (tmp / f).replace(dest / f)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        entry["key"] = keys[name]
        manifest["components"][name] = entry
        write_json_atomic(out / MANIFEST, manifest)
        on_event(name, "done")
    manifest["files_bytes"] = {n: sum(e["files"].values()) for n, e in manifest["components"].items()}
    write_json_atomic(out / MANIFEST, manifest)
    manifest["out_dir"] = str(out)
    return manifest
