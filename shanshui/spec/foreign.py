"""ONNX diffusion folders shanshui did not write (Optimum's `optimum-cli export onnx`, `ORTStableDiffusionPipeline`
save_pretrained): a manifest read from their own configs, so the runtime opens them like our exports.

    model_index.json  scheduler/  tokenizer/  text_encoder/model.onnx  unet/model.onnx  vae_decoder/model.onnx
    [vae_encoder/model.onnx]   each component folder with its config.json (the diffusers/transformers config)

Torch-free: JSON and file sizes only. Input dtypes (Optimum's int32 ids, an int64 timestep) are the backend's to follow.
"""

from __future__ import annotations

import json
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.spec.clip_bpe import special_tokens, token_text
from shanshui.spec.contract import ALL_COMPONENTS, COMPONENTS


def is_foreign_onnx(root: Path) -> bool:
    root = Path(root)
    return (root / "model_index.json").is_file() and all((root / c / "model.onnx").is_file() for c in COMPONENTS)


def _config(root: Path, comp: str) -> dict:
    path = root / comp / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShanshuiError(f"{root.name}/{comp}/ has model.onnx but no config.json; re-export the folder") from None
    except ValueError:
        raise ShanshuiError(f"{root.name}/{comp}/config.json is not valid JSON; re-export the folder") from None


def foreign_manifest(root: Path) -> dict:
    """A shanshui manifest (the fields the runtime reads, less format_version) for an ONNX folder from another exporter."""
    root = Path(root)
    te, unet, vae = _config(root, "text_encoder"), _config(root, "unet"), _config(root, "vae_decoder")
    if unet.get("addition_embed_type") in ("text_time", "image"):
        raise ShanshuiError(f"{root.name}: SDXL-style U-Nets (extra time/text inputs) are not supported; use an SD 1.x/2.x model")
    tok_dir = root / "tokenizer"
    tok_cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8")) if (tok_dir / "tokenizer_config.json").is_file() else {}
    text_len = int(tok_cfg.get("model_max_length", 0) or 0)
    if not 0 < text_len <= 4096:
        text_len = int(te.get("max_position_embeddings", 77))
    pad = token_text(tok_cfg.get("pad_token")) or special_tokens(tok_dir).get("pad_token")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    size = vae.get("sample_size", 512)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    multiple = vae_scale * 2 ** (len(unet["block_out_channels"]) - 1)
    dims = {"text_len": text_len, "text_dim": int(te["hidden_size"]), "vocab_size": int(te["vocab_size"]),
            "latent_channels": int(unet.get("in_channels", 4)), "vae_scale": vae_scale, "size_multiple": multiple}
    comps = [c for c in ALL_COMPONENTS if (root / c / "model.onnx").is_file()]
    return {
        "precision": "unknown",
        "foreign": True,
        "dims": dims,
        "shapes": {"height": size, "width": size, "min_size": min(128, size), "max_size": max(1024, size), "max_batch": 4},
        "vae_scaling_factor": float(vae.get("scaling_factor", 0.18215)),
        "tokenizer": {"max_length": text_len, "pad_token": pad},
        "components": {c: {"file": f"{c}/model.onnx",
                           "files": {p.name: p.stat().st_size for p in sorted((root / c).glob("model.onnx*"))}}
                       for c in comps},
    }
