"""`shanshui train vae`: an AutoencoderKL (8× downsampling) trained on random crops of the paintings.

Loss: L1 + MSE reconstruction, a colour term (MSE of 8×8-pooled images: the tone and tint a painting's style, season
and time of day are read from, which pixel losses on crops leave to drift) and an edge term (L1 of the image
gradients: ink lines), plus a small KL term. At the end the latent scaling factor is set to 1/std of the latents (so
the U-Net sees unit-variance inputs) and reconstruction PSNR/SSIM on held-out images is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.fsutil import portable_paths, write_json_atomic
from shanshui.hf import reconstruct, to_tensor
from shanshui.metrics import psnr, ssim
from shanshui.runtime.image import save_grid
from shanshui.train.arch import build_components
from shanshui.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from shanshui.train.common import LossLog, fused_adamw, load_image, lr_at, make_accelerator, read_examples


@dataclass
class VaeConfig:
    arch: str = "tiny"
    size: int = 256  # images are loaded at this size; crops are taken from them
    crop: int = 128
    batch: int = 16
    steps: int = 2000
    lr: float = 4e-4
    warmup: int = 100
    kl_weight: float = 1e-6
    colour_weight: float = 2.0  # MSE of 8×8 average-pooled images
    edge_weight: float = 0.5  # L1 of horizontal and vertical differences
    norm_groups: int | None = None  # GroupNorm groups (None: the architecture's); for ablations
    latent_channels: int | None = None  # likewise
    held_out: int = 32  # images kept out of training, for the PSNR/SSIM report
    max_images: int = 4000  # images held in memory
    checkpoint_every: int = 500
    mixed_precision: str = "bf16"
    seed: int = 0

    def overrides(self) -> dict:
        """AutoencoderKL config overrides for build_components."""
        return {k: v for k, v in (("norm_num_groups", self.norm_groups), ("latent_channels", self.latent_channels)) if v}


def _check(cfg: VaeConfig) -> None:
    limits.check_train(cfg, "vae")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ShanshuiError("steps and batch must be at least 1")
    if cfg.crop % 8 or cfg.crop > cfg.size:
        raise ShanshuiError(f"crop {cfg.crop} must be a multiple of 8 and at most the image size {cfg.size}")


def load_images(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([load_image(p, size) for p in paths])  # (N, size, size, 3) uint8


def latent_std(vae, images: np.ndarray, device, batch: int = 16) -> float:
    import torch

    with torch.no_grad():
        lat = [vae.encode(to_tensor(images[i : i + batch]).to(device)).latent_dist.mean.float().cpu() for i in range(0, len(images), batch)]
    return float(torch.cat(lat).std())


def vae_loss(vae, batch, kl_weight: float, colour_weight: float = 0.0, edge_weight: float = 0.0):
    """L1 + MSE reconstruction of batch (B, 3, H, W) in [-1, 1] through a sampled latent, + colour_weight · MSE of
    8×8-pooled images + edge_weight · L1 of image gradients + kl_weight · KL."""
    post = vae.encode(batch).latent_dist
    rec = vae.decode(post.sample()).sample.float()  # (B, 3, H, W)
    t = reconstruction_terms(rec, batch)
    kl = post.kl().mean()
    loss = t["l1"] + t["mse"] + colour_weight * t["colour"] + edge_weight * t["edge"] + kl_weight * kl
    return loss, {**{k: v.item() for k, v in t.items()}, "kl": kl.item()}


def reconstruction_terms(rec, target) -> dict:
    """l1, mse, colour (MSE of the 8×8-pooled difference: tone and tint, not detail) and edge (L1 of the difference's
    horizontal and vertical steps) between (B, 3, H, W) tensors."""
    import torch.nn.functional as F

    diff = rec - target
    return {"l1": diff.abs().mean(), "mse": (diff**2).mean(), "colour": (F.avg_pool2d(diff, 8) ** 2).mean(),
            "edge": (diff.diff(dim=-1).abs().mean() + diff.diff(dim=-2).abs().mean()) / 2}


def train_vae(data: Path, out: Path, cfg: VaeConfig, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train (or resume) a VAE; writes a diffusers AutoencoderKL folder at `out` plus report.json. Returns the report."""
    _check(cfg)  # every check, and the data, before torch is even imported
    out = limits.new_folder(Path(out), "VAE folder")
    examples = read_examples(data)
    if len(examples) <= cfg.held_out:
        raise ShanshuiError(f"{data} has {len(examples)} images; the VAE needs more than the {cfg.held_out} held out")
    import torch

    held = load_images([e.image for e in examples[: cfg.held_out]], cfg.size)
    train = load_images([e.image for e in examples[cfg.held_out : cfg.held_out + cfg.max_images]], cfg.size)

    acc = make_accelerator(cfg.mixed_precision, cfg.seed)
    _, _, vae, _ = build_components(cfg.arch, cfg.seed, vae_overrides=cfg.overrides())
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99), **fused_adamw())
    start = 0
    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is not None:
        start = load_checkpoint(ckpt, {"vae": vae}, opt)["step"]
    vae, opt = acc.prepare(vae, opt)
    log = LossLog(out / "loss.jsonl")
    rng = np.random.default_rng(cfg.seed + start)
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        idx = rng.integers(0, len(train), cfg.batch)
        y, x = rng.integers(0, cfg.size - cfg.crop + 1, 2)
        crop = train[idx, y : y + cfg.crop, x : x + cfg.crop]  # (B, crop, crop, 3)
        flip = rng.random(cfg.batch) < 0.5
        crop = np.where(flip[:, None, None, None], crop[:, :, ::-1], crop)
        batch = to_tensor(np.ascontiguousarray(crop)).to(acc.device)
        with acc.autocast():
            loss, parts = vae_loss(acc.unwrap_model(vae), batch, cfg.kl_weight, cfg.colour_weight, cfg.edge_weight)
        acc.backward(loss)
        acc.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step in (start, cfg.steps - 1):
            log.write(step, loss=loss.item(), **parts, lr=opt.param_groups[0]["lr"])
        if progress:
            progress(step + 1, cfg.steps, float(loss.item()))
        if (step + 1) % cfg.checkpoint_every == 0 and acc.is_main_process:
            save_checkpoint(out / "checkpoints", step + 1, {"vae": acc.unwrap_model(vae)}, opt, extra={"config": portable_paths(asdict(cfg))})

    return _finish(acc.unwrap_model(vae).eval().float(), held, train, out, cfg, len(examples), acc)


def _finish(vae, held: np.ndarray, train: np.ndarray, out: Path, cfg: VaeConfig, images: int, acc) -> dict:
    """Set the latent scaling factor, measure held-out reconstructions, write the folder and its report."""
    scale = 1.0 / latent_std(vae, np.concatenate([held, train[:256]]), acc.device)
    vae.register_to_config(scaling_factor=round(scale, 5))
    rec = reconstruct(vae, held, acc.device)
    report = {
        "config": portable_paths(asdict(cfg)),
        "images": images,
        "scaling_factor": round(scale, 5),
        "held_out_psnr_db": round(float(np.mean([psnr(a, b) for a, b in zip(held, rec)])), 2),
        "held_out_ssim": round(float(np.mean([ssim(a, b) for a, b in zip(held, rec)])), 4),
    }
    if acc.is_main_process:
        vae.save_pretrained(out, safe_serialization=True)
        save_grid([im for pair in zip(held[:8], rec[:8]) for im in pair], out / "reconstructions.png", cols=4)
        write_json_atomic(out / "report.json", report)  # strict: a NaN loss becomes null
    return report
