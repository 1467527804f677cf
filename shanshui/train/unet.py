"""`shanshui train unet`: text encoder + U-Net trained jointly on VAE latents with the DDPM objective.

ε-prediction MSE with min-SNR-γ weighting, AdamW, warm-up + cosine learning rate, EMA weights, random flips,
caption dropout for classifier-free guidance, Chinese and English captions mixed. Latents are encoded once
(posterior mean and std, kept in memory and in OUT/latents.safetensors) and re-sampled every step; flips are
applied to latents. The output folder is a diffusers StableDiffusionPipeline that `shanshui export` takes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shanshui.errors import ShanshuiError

SAMPLE_PROMPTS = [
    "一棵青松，青山环绕，云雾缭绕",
    "水墨山水，江上渔舟",
    "青绿山水，瀑布，凉亭",
    "冬日雪山，枯树",
    "a lone pine on a misty mountain, ink wash",
    "blue-green landscape with a pagoda and a river",
    "autumn mountains with red maples and a boat at dusk",
    "a lake under the moon with distant peaks",
]


@dataclass
class UnetConfig:
    arch: str = "tiny"
    size: int = 256
    batch: int = 32
    steps: int = 20000
    lr: float = 3e-4
    text_lr_scale: float = 0.5  # the text encoder learns at this fraction of lr
    warmup: int = 500
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # 0 turns the weighting off
    checkpoint_every: int = 1000
    sample_every: int = 1000
    sample_steps: int = 20
    mixed_precision: str = "bf16"
    seed: int = 0


def encode_latents(vae, paths: list[Path], size: int, device, batch: int = 32, progress=None):
    """(mean, std) of the VAE posterior for every image, float16 (N, C, h, w)."""
    import torch

    from shanshui.train.common import load_image, to_tensor

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = to_tensor(np.stack([load_image(p, size) for p in paths[i : i + batch]])).to(device)
            d = vae.encode(x).latent_dist
            means.append(d.mean.half().cpu().contiguous())  # (b, C, h, w)
            stds.append(d.std.half().cpu().contiguous())
            if progress:
                progress(min(i + batch, len(paths)), len(paths))
    return torch.cat(means), torch.cat(stds)


def _latents(out: Path, vae, examples, cfg: UnetConfig, device, progress):
    """Cached in OUT/latents.safetensors, keyed by image size and list, so a resumed run does not re-encode."""
    import hashlib

    from safetensors.torch import load_file, save_file

    listing = f"{cfg.size}\n" + "\n".join(str(e.image) for e in examples)  # a new size must re-encode
    key = hashlib.sha256(listing.encode()).hexdigest()[:16]
    cache = out / "latents.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        if "key" in t and bytes(t["key"].tolist()).decode() == key:
            return t["mean"], t["std"]
    mean, std = encode_latents(vae, [e.image for e in examples], cfg.size, device, progress=progress)
    import torch

    from shanshui.fsutil import atomic_path

    with atomic_path(cache) as tmp:
        save_file({"mean": mean, "std": std, "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, str(tmp))
    return mean, std


def _pipeline_for(text_encoder, unet, vae, tokenizer_dir: Path, scheduler, cfg: UnetConfig, device: str):
    from shanshui.export.contract import ModelDims
    from shanshui.runtime.backends import TorchComponents
    from shanshui.runtime.pipeline import Pipeline
    from shanshui.runtime.tokenizer import open_tokenizer

    tok = open_tokenizer(tokenizer_dir)
    dims = ModelDims(text_len=tok.max_length, text_dim=text_encoder.config.hidden_size, vocab_size=text_encoder.config.vocab_size,
                     latent_channels=unet.config.in_channels, vae_scale=8, size_multiple=8 * 2 ** (len(unet.config.block_out_channels) - 1))
    parts = TorchComponents(text_encoder, unet, vae, device)
    return Pipeline.from_parts(parts, tok, dict(scheduler.config), dims, vae.config.scaling_factor, (cfg.size, cfg.size))


def train_unet(data: Path, out: Path, vae_dir: Path, cfg: UnetConfig,
               progress: Callable[[str, int, int, float], None] | None = None) -> dict:
    """Train (or resume) text encoder + U-Net; writes a diffusers pipeline folder at `out`. Returns a summary."""
    import torch
    from diffusers import AutoencoderKL

    from shanshui.train.arch import build_components, count_parameters, write_model_index
    from shanshui.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from shanshui.train.common import EMA, LossLog, lr_at, make_accelerator, read_examples
    from shanshui.train.tokenizer import build_tokenizer, save_tokenizer

    if cfg.steps < 1 or cfg.batch < 1:
        raise ShanshuiError("steps and batch must be at least 1")
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise ShanshuiError(f"{vae_dir} is not a trained VAE folder; run `shanshui train vae DATA OUT` first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    examples = read_examples(data)
    acc = make_accelerator(cfg.mixed_precision, cfg.seed)
    device = acc.device
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).to(device).eval().requires_grad_(False)
    scale = float(vae.config.scaling_factor)

    text_encoder, unet, _, scheduler = build_components(cfg.arch, cfg.seed)
    text_len = text_encoder.config.max_position_embeddings
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():  # the vocabulary of this data set's captions
        corpus = [c for e in examples for c in e.captions]
        save_tokenizer(build_tokenizer(text_len, text_encoder.config.vocab_size, corpus), tok_dir, text_len)
    from shanshui.runtime.tokenizer import open_tokenizer

    tokenizer = open_tokenizer(tok_dir)
    mean, std = _latents(out, vae, examples, cfg, device, lambda i, n: progress and progress("encoding latents", i, n, 0.0))

    modules = {"text_encoder": text_encoder.train(), "unet": unet.train()}
    opt = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": cfg.lr, "scale": 1.0},
        {"params": text_encoder.parameters(), "lr": cfg.lr * cfg.text_lr_scale, "scale": cfg.text_lr_scale},
    ], lr=cfg.lr, weight_decay=1e-2, betas=(0.9, 0.999))
    ema = EMA(modules, cfg.ema_decay)
    start = 0
    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is not None:
        start = load_checkpoint(ckpt, modules, opt, ema)["step"]
    unet, text_encoder, opt = acc.prepare(unet, text_encoder, opt)
    alphas_cumprod = torch.tensor(np.cumprod(1 - _betas(scheduler)), dtype=torch.float32, device=device)
    log = LossLog(out / "loss.jsonl")
    rng = np.random.default_rng(cfg.seed + start)
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps) * g["scale"]
        idx = rng.integers(0, len(examples), cfg.batch)
        lat = (mean[idx].float() + std[idx].float() * torch.from_numpy(rng.standard_normal(mean[idx].shape)).float()) * scale
        flip = torch.from_numpy(rng.random(cfg.batch) < 0.5)
        lat = torch.where(flip[:, None, None, None], lat.flip(-1), lat).to(device)  # (B, C, h, w)
        caps = [examples[i].captions[rng.integers(len(examples[i].captions))] if rng.random() >= cfg.caption_dropout else ""
                for i in idx]
        ids = torch.from_numpy(tokenizer(caps)[0]).to(device)  # (B, L)
        noise = torch.from_numpy(rng.standard_normal(lat.shape)).float().to(device)
        t = torch.from_numpy(rng.integers(0, len(alphas_cumprod), cfg.batch)).to(device)
        with acc.autocast():
            loss = diffusion_loss(text_encoder, unet, lat, ids, noise, t, alphas_cumprod, cfg.min_snr_gamma)
        acc.backward(loss)
        acc.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update({"text_encoder": acc.unwrap_model(text_encoder), "unet": acc.unwrap_model(unet)})
        if step % 20 == 0 or step in (start, cfg.steps - 1):
            log.write(step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
        if progress:
            progress("training", step + 1, cfg.steps, float(loss.item()))
        done = step + 1
        if acc.is_main_process and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            mods = {"text_encoder": acc.unwrap_model(text_encoder), "unet": acc.unwrap_model(unet)}
            save_checkpoint(out / "checkpoints", done, mods, opt, ema, extra={"config": asdict(cfg)})
        if acc.is_main_process and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            _sample_grid(ema, acc, text_encoder, unet, vae, tok_dir, scheduler, cfg, device, out / "samples" / f"step-{done:06d}.png")

    te_final, unet_final = acc.unwrap_model(text_encoder), acc.unwrap_model(unet)
    ema.copy_to({"text_encoder": te_final, "unet": unet_final})
    summary = {"config": asdict(cfg), "images": len(examples), "steps": cfg.steps, "vae": str(vae_dir),
               "parameters": {"text_encoder": count_parameters(te_final), "unet": count_parameters(unet_final), "vae": count_parameters(vae)}}
    summary["parameters"]["total"] = sum(summary["parameters"].values())
    if acc.is_main_process:
        te_final.eval().save_pretrained(out / "text_encoder", safe_serialization=True)
        unet_final.eval().save_pretrained(out / "unet", safe_serialization=True)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")
        write_model_index(out)
        (out / "shanshui.json").write_text(json.dumps({"arch": cfg.arch, "resolution": cfg.size, **summary}, indent=2) + "\n", encoding="utf-8")
        if (vae_dir / "report.json").is_file():
            shutil.copy2(vae_dir / "report.json", out / "vae_report.json")
    return summary


def diffusion_loss(text_encoder, unet, lat, ids, noise, t, alphas_cumprod, min_snr_gamma: float = 5.0):
    """DDPM ε-prediction MSE on latents lat (B, C, h, w) at timesteps t (B,), min-SNR-γ weighted when γ > 0."""
    import torch

    ab = alphas_cumprod[t][:, None, None, None]
    noisy = ab.sqrt() * lat + (1 - ab).sqrt() * noise  # q(x_t | x_0)
    cond = text_encoder(ids).last_hidden_state  # (B, L, D)
    pred = unet(noisy, t, cond).sample  # (B, C, h, w)
    per_sample = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:  # Hang et al. 2023: weight min(SNR, γ)/SNR for ε-prediction
        snr = (ab / (1 - ab)).flatten()
        per_sample = per_sample * torch.clamp(snr, max=min_snr_gamma) / snr
    return per_sample.mean()


def _betas(scheduler) -> np.ndarray:
    from shanshui.runtime.schedules import betas_from_config

    return betas_from_config(dict(scheduler.config))


def _sample_grid(ema, acc, text_encoder, unet, vae, tok_dir, scheduler, cfg, device, path: Path) -> None:
    """Draw SAMPLE_PROMPTS with the EMA weights through the runtime's own sampler loop."""
    import copy

    from shanshui.runtime.pipeline import Request
    from shanshui.train.common import save_grid

    te, un = copy.deepcopy(acc.unwrap_model(text_encoder)).eval(), copy.deepcopy(acc.unwrap_model(unet)).eval()
    ema.copy_to({"text_encoder": te, "unet": un})
    pipe = _pipeline_for(te, un, vae, tok_dir, scheduler, cfg, str(device))
    images = [pipe(Request(p, steps=cfg.sample_steps, guidance=4.0, seed=i)).images[0] for i, p in enumerate(SAMPLE_PROMPTS)]
    save_grid(images, path, cols=4)
