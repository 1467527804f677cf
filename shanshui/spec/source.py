"""Reading a diffusers Stable-Diffusion-style folder (ours or any SD 1.x/2.x): layout checks, dims, content hashes.

Torch-free: only JSON and file hashing, so errors about a wrong folder come before any heavy import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.fsutil import read_json, sha256_files
from shanshui.integrity import check_safetensors
from shanshui.spec.contract import ModelDims

REQUIRED = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")


def model_resolution(root: Path) -> int:
    """The image size a diffusers folder was trained for: shanshui.json's resolution, else its VAE's sample_size."""
    meta = Path(root) / "shanshui.json"
    if meta.is_file() and int(read_json(meta).get("resolution", 0) or 0) > 0:
        return int(read_json(meta)["resolution"])
    res = read_json(Path(root) / "vae" / "config.json").get("sample_size", 512)
    return int(res[0] if isinstance(res, (list, tuple)) else res)


@dataclass(frozen=True)
class SourceModel:
    root: Path
    dims: ModelDims
    scheduler: dict
    vae_scaling_factor: float

    def weight_files(self, component: str) -> list[Path]:
        folder = self.root / component
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.ckpt"))
            hint = f" (found {', '.join(pickles)}: pickle weights are never loaded; convert them to safetensors)" if pickles else ""
            raise ShanshuiError(f"no .safetensors weights in {folder}{hint}")
        for f in files:
            check_safetensors(f)
        return files

    def component_hash(self, component: str) -> str:
        """Hash of a component's config and weights: an export is reused only for the same source."""
        return sha256_files([self.root / component / "config.json", *self.weight_files(component)])


def open_source(root: Path) -> SourceModel:
    """Validate a diffusers pipeline folder and read the dims the export contract needs."""
    root = Path(root)
    if not root.is_dir():
        raise ShanshuiError(f"model folder {root} does not exist; pass a diffusers folder (see `shanshui init`)")
    if not (root / "model_index.json").is_file():
        raise ShanshuiError(f"{root} is not a diffusers pipeline folder (no model_index.json); `shanshui init` makes one")
    missing = [c for c in REQUIRED if not (root / c).is_dir()]
    if missing:
        raise ShanshuiError(f"{root} lacks {', '.join(missing)}/; a Stable-Diffusion-style folder needs {', '.join(REQUIRED)}/")
    te = read_json(root / "text_encoder" / "config.json")
    unet = read_json(root / "unet" / "config.json")
    vae = read_json(root / "vae" / "config.json")
    sched = read_json(root / "scheduler" / "scheduler_config.json")
    tok_cfg = read_json(root / "tokenizer" / "tokenizer_config.json")
    text_len = int(tok_cfg.get("model_max_length", 0) or 0)
    if not 0 < text_len <= 4096:  # CLIP tokenizers store 77; a sentinel like 1e30 means "unset"
        text_len = int(te.get("max_position_embeddings", 77))
    cross = unet.get("cross_attention_dim")
    if isinstance(cross, list):
        cross = cross[0]
    if int(cross) != int(te["hidden_size"]):
        raise ShanshuiError(f"U-Net cross_attention_dim {cross} != text encoder hidden_size {te['hidden_size']}: mismatched components")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    unet_down = 2 ** (len(unet["block_out_channels"]) - 1)
    dims = ModelDims(
        text_len=text_len,
        text_dim=int(te["hidden_size"]),
        vocab_size=int(te["vocab_size"]),
        latent_channels=int(unet.get("in_channels", 4)),
        vae_scale=vae_scale,
        size_multiple=vae_scale * unet_down,
    )
    return SourceModel(root=root, dims=dims, scheduler=sched, vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)))


def source_ref(source: Path, export: Path) -> str:
    """How an export's manifest names its source: relative to the export, never an absolute path of this machine.

    A source more than two levels up from the export is named by its folder alone (the relative path would spell out
    the user's directories); `resolve_source_ref` then finds nothing, and the export still works on its own.
    """
    rel = Path(os.path.relpath(Path(source).resolve(), Path(export).resolve()))
    return rel.as_posix() if rel.parts[:3].count("..") < 3 else Path(source).resolve().name


def resolve_source_ref(ref: str | None, export: Path) -> Path | None:
    """The source folder a manifest names, if it is still there (a diffusers folder); None otherwise."""
    if not ref:
        return None
    folder = (Path(export) / ref).resolve()  # an absolute ref (older shanshui versions wrote one) stays as it is
    return folder if (folder / "model_index.json").is_file() else None
