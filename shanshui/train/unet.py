"""`shanshui train unet`: text encoder + U-Net trained jointly on VAE latents with the DDPM objective.

The prediction type and noise schedule are the architecture's (tiny: v-prediction on a zero-terminal-SNR schedule;
sd15: ε), MSE with min-SNR-γ weighting, AdamW, warm-up + cosine learning rate, EMA weights, random flips, caption
dropout for classifier-free guidance, Chinese and English captions mixed. Before the first step the text encoder is
pre-trained to state each caption's scene attributes (`text_pretrain.py`). `init_from` starts from a trained
pipeline (e.g. 128 px → 256 px). Latents are encoded once (posterior mean and std, in OUT/latents.safetensors) and
re-sampled every step; flips are applied to latents. OUT is a diffusers StableDiffusionPipeline for `shanshui export`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shanshui import limits
from shanshui.data.captions import phrases
from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_path, drop_load_path, portable_paths, write_json_atomic
from shanshui.hf import to_tensor
from shanshui.runtime.backends import TorchComponents
from shanshui.runtime.image import save_grid
from shanshui.runtime.pipeline import Pipeline, Request
from shanshui.runtime.schedules import betas_from_config
from shanshui.runtime.tokenizer import open_tokenizer
from shanshui.spec.contract import ModelDims
from shanshui.train.arch import ARCHS, build_components, count_parameters, write_model_index
from shanshui.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from shanshui.train.common import EMA, LossLog, attention_kernel, draw_caption, fused_adamw, load_image, lr_at, make_accelerator, read_examples
from shanshui.train.text_pretrain import pretrain_text_encoder
from shanshui.train.tokenizer import build_tokenizer, save_tokenizer
from shanshui.weights import keys_for, load_strict, save_text_encoder

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
    fresh_captions: bool = True  # rendered data: a new true caption from the painting's scene at every visit
    min_snr_gamma: float = 5.0  # 0 turns the weighting off
    checkpoint_every: int = 1000
    sample_every: int = 1000
    sample_steps: int = 20
    mixed_precision: str = "bf16"
    seed: int = 0
    # None keeps the architecture's own choice; set for ablations
    prediction_type: str | None = None  # epsilon | v_prediction
    zero_snr: bool | None = None  # rescale betas to zero terminal SNR
    text_time_embed: bool | None = None  # pooled text embedding added to the time embedding
    text_pretrain_steps: int = 600  # attribute pre-training of the text encoder (0: off); skipped with init_from
    init_from: str | None = None  # a trained pipeline folder whose text encoder, U-Net and tokenizer to start from

    def overrides(self) -> tuple[dict, dict]:
        """(unet, scheduler) config overrides for build_components."""
        unet, sched = {}, {}
        if self.text_time_embed is not None:
            unet["addition_embed_type"] = "text" if self.text_time_embed else None
        if self.prediction_type is not None:
            sched["prediction_type"] = self.prediction_type
        if self.zero_snr is not None:
            sched["rescale_betas_zero_snr"] = self.zero_snr
        return unet, sched


def encode_latents(vae, paths: list[Path], size: int, device, batch: int = 32, progress=None):
    """(mean, std) of the VAE posterior for every image, float16 (N, C, h, w)."""
    import torch

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

    with atomic_path(cache) as tmp:
        save_file({"mean": mean, "std": std, "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, str(tmp))
    return mean, std


def _pipeline_for(text_encoder, unet, vae, tokenizer_dir: Path, scheduler, cfg: UnetConfig, device: str):
    tok = open_tokenizer(tokenizer_dir)
    dims = ModelDims(text_len=tok.max_length, text_dim=text_encoder.config.hidden_size, vocab_size=text_encoder.config.vocab_size,
                     latent_channels=unet.config.in_channels, vae_scale=8, size_multiple=8 * 2 ** (len(unet.config.block_out_channels) - 1))
    parts = TorchComponents(text_encoder, unet, vae, device)
    return Pipeline(parts, tok, dict(scheduler.config), dims, vae.config.scaling_factor, (cfg.size, cfg.size))


def train_unet(data: Path, out: Path, vae_dir: Path, cfg: UnetConfig,
               progress: Callable[[str, int, int, float], None] | None = None) -> dict:
    """Train (or resume) text encoder + U-Net; writes a diffusers pipeline folder at `out`. Returns a summary."""
    limits.check_train(cfg, "unet", ARCHS)  # every check, and the data, before torch is even imported
    limits.new_folder(Path(out), "pipeline folder")
    vae_dir, out = _check_config(cfg, vae_dir), Path(out)
    examples = read_examples(data)
    import torch
    from diffusers import AutoencoderKL

    out.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(cfg.mixed_precision, cfg.seed)
    device = acc.device
    vae = load_strict(AutoencoderKL, vae_dir, "VAE", use_safetensors=True).to(device).eval().requires_grad_(False)
    text_encoder, unet, scheduler, tokenizer = _text_and_unet(out, examples, cfg, int(vae.config.latent_channels))
    tok_dir = out / "tokenizer"
    mean, std = _latents(out, vae, examples, cfg, device, lambda i, n: progress and progress("encoding latents", i, n, 0.0))
    if cfg.text_pretrain_steps > 0 and not cfg.init_from and latest_checkpoint(out / "checkpoints") is None:
        report = pretrain_text_encoder(text_encoder, tokenizer, cfg.text_pretrain_steps, seed=cfg.seed, device=device,
                                       progress=lambda i, n, loss: progress and progress("text encoder pre-training", i, n, loss))
        write_json_atomic(out / "text_pretrain.json", report)  # strict: a NaN loss becomes null

    modules = {"text_encoder": text_encoder.train(), "unet": unet.train()}
    opt = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": cfg.lr, "scale": 1.0},
        {"params": text_encoder.parameters(), "lr": cfg.lr * cfg.text_lr_scale, "scale": cfg.text_lr_scale},
    ], lr=cfg.lr, weight_decay=1e-2, betas=(0.9, 0.999), **fused_adamw())
    ema = EMA(modules, cfg.ema_decay)
    start = 0
    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is not None:
        start = load_checkpoint(ckpt, modules, opt, ema)["step"]
    unet, text_encoder, opt = acc.prepare(unet, text_encoder, opt)
    alphas_cumprod = torch.tensor(np.cumprod(1 - _betas(scheduler)), dtype=torch.float32, device=device)  # ᾱ_T may be 0
    log = LossLog(out / "loss.jsonl")
    rng = np.random.default_rng(cfg.seed + start)
    for step in range(start, cfg.steps):
        loss = _train_step(step, rng, cfg, acc, text_encoder, unet, opt, ema, tokenizer, examples, mean, std,
                           float(vae.config.scaling_factor), alphas_cumprod, scheduler.config.prediction_type)
        if step % 20 == 0 or step in (start, cfg.steps - 1):
            log.write(step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
        if progress:
            progress("training", step + 1, cfg.steps, float(loss.item()))
        done = step + 1
        if acc.is_main_process and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            mods = {"text_encoder": acc.unwrap_model(text_encoder), "unet": acc.unwrap_model(unet)}
            save_checkpoint(out / "checkpoints", done, mods, opt, ema, extra={"config": portable_paths(asdict(cfg))})
        if acc.is_main_process and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            _sample_grid(ema, acc, text_encoder, unet, vae, tok_dir, scheduler, cfg, device, out / "samples" / f"step-{done:06d}.png")
    return _save_pipeline(out, vae_dir, cfg, acc, ema, text_encoder, unet, vae, scheduler, len(examples))


def _check_config(cfg: UnetConfig, vae_dir: Path) -> Path:
    """Every setting checked before anything is loaded."""
    if cfg.steps < 1 or cfg.batch < 1:
        raise ShanshuiError("steps and batch must be at least 1")
    if not 0 <= cfg.ema_decay < 1 or cfg.warmup < 0 or cfg.text_pretrain_steps < 0:
        raise ShanshuiError("ema decay must be in [0, 1), warm-up and text pre-training steps at least 0")
    if cfg.init_from and not (Path(cfg.init_from) / "unet").is_dir():
        raise ShanshuiError(f"--init-from {cfg.init_from} is not a pipeline folder from `shanshui train unet`")
    if cfg.prediction_type not in (None, "epsilon", "v_prediction"):
        raise ShanshuiError(f"prediction type {cfg.prediction_type!r} is not epsilon or v_prediction")
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise ShanshuiError(f"{vae_dir} is not a trained VAE folder; run `shanshui train vae DATA OUT` first")
    return vae_dir


def _text_and_unet(out: Path, examples, cfg: UnetConfig, latent_channels: int):
    """Fresh (or --init-from) text encoder and U-Net (its input and output as wide as the VAE's latents), the
    scheduler, and the tokenizer of this data set's captions."""
    unet_overrides, sched_overrides = cfg.overrides()
    unet_overrides.update(in_channels=latent_channels, out_channels=latent_channels)
    text_encoder, unet, _, scheduler = build_components(cfg.arch, cfg.seed, unet_overrides, sched_overrides)
    if scheduler.config.prediction_type == "epsilon" and scheduler.config.get("rescale_betas_zero_snr", False):
        raise ShanshuiError("a zero-terminal-SNR schedule needs v-prediction (ε carries no signal at SNR 0)")
    text_len = text_encoder.config.max_position_embeddings
    tok_dir = out / "tokenizer"
    if cfg.init_from:
        _init_from(Path(cfg.init_from), text_encoder, unet, tok_dir)
    if not (tok_dir / "tokenizer.json").is_file():  # the vocabulary of this data set's captions
        corpus = [c for e in examples for c in e.captions]
        if cfg.fresh_captions:  # every wording a fresh caption can use, so none falls to [UNK]
            corpus += sorted({w for e in examples if e.scene is not None for ph in phrases(e.scene) for w in (*ph.zh, *ph.en)})
        save_tokenizer(build_tokenizer(text_len, text_encoder.config.vocab_size, corpus), tok_dir, text_len)
    return text_encoder, unet, scheduler, open_tokenizer(tok_dir)


def _train_step(step: int, rng, cfg: UnetConfig, acc, text_encoder, unet, opt, ema, tokenizer, examples, mean, std,
                scale: float, alphas_cumprod, prediction_type: str):
    """One optimiser step on a random batch (latents drawn from their cached posterior, random flips and caption
    dropout); returns the loss."""
    import torch

    device = acc.device
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps) * g["scale"]
    idx = rng.integers(0, len(examples), cfg.batch)
    lat = (mean[idx].float() + std[idx].float() * torch.from_numpy(rng.standard_normal(mean[idx].shape)).float()) * scale
    flip = torch.from_numpy(rng.random(cfg.batch) < 0.5)
    lat = torch.where(flip[:, None, None, None], lat.flip(-1), lat).to(device)  # (B, C, h, w)
    caps = [draw_caption(examples[i], rng, cfg.fresh_captions) if rng.random() >= cfg.caption_dropout else "" for i in idx]
    ids = torch.from_numpy(tokenizer(caps)[0]).to(device)  # (B, L)
    noise = torch.from_numpy(rng.standard_normal(lat.shape)).float().to(device)
    t = torch.from_numpy(rng.integers(0, len(alphas_cumprod), cfg.batch)).to(device)
    with acc.autocast(), attention_kernel(device):
        loss = diffusion_loss(text_encoder, unet, lat, ids, noise, t, alphas_cumprod, cfg.min_snr_gamma, prediction_type)
    acc.backward(loss)
    acc.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update({"text_encoder": acc.unwrap_model(text_encoder), "unet": acc.unwrap_model(unet)})
    return loss


def _save_pipeline(out: Path, vae_dir: Path, cfg: UnetConfig, acc, ema, text_encoder, unet, vae, scheduler, images: int) -> dict:
    """The EMA weights into a diffusers pipeline folder at `out`; returns the summary."""
    te_final, unet_final = acc.unwrap_model(text_encoder), acc.unwrap_model(unet)
    ema.copy_to({"text_encoder": te_final, "unet": unet_final})
    summary = {"config": portable_paths(asdict(cfg)), "images": images, "steps": cfg.steps, "vae": portable_paths(str(vae_dir)),
               "parameters": {"text_encoder": count_parameters(te_final), "unet": count_parameters(unet_final), "vae": count_parameters(vae)}}
    summary["parameters"]["total"] = sum(summary["parameters"].values())
    if acc.is_main_process:
        save_text_encoder(te_final.eval(), out / "text_encoder")  # key names transformers 4.x and 5.x both read
        unet_final.eval().save_pretrained(out / "unet", safe_serialization=True)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        drop_load_path(out / "vae" / "config.json")  # diffusers records the folder it was loaded from
        scheduler.save_pretrained(out / "scheduler")
        write_model_index(out)
        write_json_atomic(out / "shanshui.json", {"arch": cfg.arch, "resolution": cfg.size, **summary})
        if (vae_dir / "report.json").is_file():
            shutil.copy2(vae_dir / "report.json", out / "vae_report.json")
    return summary


def diffusion_loss(text_encoder, unet, lat, ids, noise, t, alphas_cumprod, min_snr_gamma: float = 5.0,
                   prediction_type: str = "epsilon"):
    """DDPM MSE (ε or v target) on latents lat (B, C, h, w) at timesteps t (B,), min-SNR-γ weighted when γ > 0.

    Weights: ε — min(SNR, γ)/SNR (Hang et al. 2023); v — min(SNR + 1, γ)/(SNR + 1), which keeps full weight on the
    low-SNR steps where composition and colour are decided (Hang et al.'s min(SNR, γ)/(SNR + 1) gives the pure-noise
    step of a zero-terminal-SNR schedule weight 0).
    """
    import torch

    ab = alphas_cumprod[t][:, None, None, None]
    noisy = ab.sqrt() * lat + (1 - ab).sqrt() * noise  # q(x_t | x_0)
    cond = text_encoder(ids).last_hidden_state  # (B, L, D)
    pred = unet(noisy, t, cond).sample  # (B, C, h, w)
    target = noise if prediction_type == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * lat
    per_sample = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        snr = (ab / (1 - ab)).flatten()
        if prediction_type == "epsilon":
            per_sample = per_sample * torch.clamp(snr, max=min_snr_gamma) / snr
        else:
            per_sample = per_sample * torch.clamp(snr + 1, max=min_snr_gamma) / (snr + 1)
    return per_sample.mean()


def _init_from(src: Path, text_encoder, unet, tok_dir: Path) -> None:
    """Load text encoder and U-Net weights (strictly) and the tokenizer from a trained pipeline folder."""
    from safetensors.torch import load_file

    for name, module in (("text_encoder", text_encoder), ("unet", unet)):
        files = sorted((src / name).glob("*.safetensors"))
        if not files:
            raise ShanshuiError(f"--init-from {src} has no {name}/*.safetensors; give a folder from `shanshui train unet`")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        state = keys_for(module, state) if name == "text_encoder" else state  # either key layout, as transformers
        missing, unexpected = module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise ShanshuiError(f"--init-from {src}/{name} does not match this architecture "
                                f"({len(missing)} missing, {len(unexpected)} unexpected weights, e.g. {(missing or unexpected)[0]})")
    if not tok_dir.is_dir():
        shutil.copytree(src / "tokenizer", tok_dir)


def _betas(scheduler) -> np.ndarray:
    return betas_from_config(dict(scheduler.config))


def _sample_grid(ema, acc, text_encoder, unet, vae, tok_dir, scheduler, cfg, device, path: Path) -> None:
    """Draw SAMPLE_PROMPTS with the EMA weights through the runtime's own sampler loop."""
    import copy

    te, un = copy.deepcopy(acc.unwrap_model(text_encoder)).eval(), copy.deepcopy(acc.unwrap_model(unet)).eval()
    ema.copy_to({"text_encoder": te, "unet": un})
    pipe = _pipeline_for(te, un, vae, tok_dir, scheduler, cfg, str(device))
    images = [pipe(Request(p, steps=cfg.sample_steps, guidance=4.0, seed=i)).images[0] for i, p in enumerate(SAMPLE_PROMPTS)]
    save_grid(images, path, cols=4)
