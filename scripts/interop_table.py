"""Measure what the ecosystem's own loaders make of shanshui's files (issue 15's client × artifact table).

    # in the Optimum venv (transformers 4.57, diffusers 0.35, optimum-onnx), with PYTHONPATH at this checkout:
    python scripts/interop_table.py optimum EXPORT [EXPORT …]        # txt2img and img2img vs shanshui generate
    # in either venv: diffusers' StableDiffusionPipeline on a diffusers folder, fixed latents -> an .npy image
    python scripts/interop_table.py diffusers FOLDER OUT.npy
    python scripts/interop_table.py compare A.npy B.npy              # PSNR in dB

Fixed noise is handed to both sides, so the numbers measure the files and runtimes, not the random draws.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PROMPT, STEPS, GUIDANCE, SEED, STRENGTH = "一棵青松，青山环绕，云雾缭绕", 10, 5.0, 0, 0.6


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else round(float(10 * np.log10(255.0**2 / mse)), 2)


def sketch(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 235, np.uint8)
    img[yy > 0.7 * h] = (90, 120, 150)
    img[(yy > 0.2 * h + np.abs(xx - w / 2) * 0.8) & (yy <= 0.7 * h)] = (40, 50, 45)
    return img


def _to_u8(images) -> np.ndarray:
    return np.round(np.clip(np.asarray(images)[0], 0, 1) * 255).astype(np.uint8)


def optimum(export: str) -> dict:
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_mod
    from optimum.onnxruntime import ORTStableDiffusionImg2ImgPipeline, ORTStableDiffusionPipeline
    from PIL import Image

    from shanshui.runtime.pipeline import Request, open_pipeline

    ours = open_pipeline(export)
    h, w = ours.default_size
    shape = (1, ours.dims.latent_channels, h // ours.dims.vae_scale, w // ours.dims.vae_scale)
    noise = torch.from_numpy(np.random.default_rng(SEED).standard_normal(shape).astype(np.float32))
    row = {"export": export.rstrip("/").split("/")[-1]}
    pipe = ORTStableDiffusionPipeline.from_pretrained(export)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    theirs = _to_u8(pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise, output_type="np").images)
    row["txt2img_psnr_db"] = psnr(ours(Request(PROMPT, steps=STEPS, guidance=GUIDANCE, seed=SEED)).images[0], theirs)

    if not (Path(export) / "vae_encoder").is_dir():
        row["img2img_psnr_db"] = "n/a (no vae_encoder/)"
        return row
    init = sketch(h, w)
    pipe = ORTStableDiffusionImg2ImgPipeline.from_pretrained(export)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    img2img_mod.randn_tensor = lambda shape, **kw: noise  # the same noise shanshui draws (its first draw)
    img2img_mod.retrieve_latents = lambda out, generator=None, sample_mode="sample": out.latent_dist.mode()  # the mean
    theirs = _to_u8(pipe(PROMPT, image=Image.fromarray(init), strength=STRENGTH, num_inference_steps=STEPS,
                         guidance_scale=GUIDANCE, output_type="np").images)
    req = Request(PROMPT, steps=STEPS, guidance=GUIDANCE, seed=SEED, init_image=init, strength=STRENGTH)
    row["img2img_psnr_db"] = psnr(ours(req).images[0], theirs)
    return row


def diffusers_image(folder: str, out: str) -> dict:
    import diffusers
    import torch
    import transformers
    from transformers import CLIPTextModel

    _, info = CLIPTextModel.from_pretrained(f"{folder}/text_encoder", output_loading_info=True)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    size = pipe.vae.config.sample_size
    shape = (1, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    noise = torch.from_numpy(np.random.default_rng(SEED).standard_normal(shape).astype(np.float32))
    image = _to_u8(pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise, output_type="np").images)
    np.save(out, image)
    return {"transformers": transformers.__version__, "diffusers": diffusers.__version__,
            "text_encoder_missing": len(info["missing_keys"]), "text_encoder_unexpected": len(info["unexpected_keys"])}


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "optimum":
        for export in args:
            print(json.dumps(optimum(export), ensure_ascii=False), flush=True)
    elif cmd == "diffusers":
        print(json.dumps(diffusers_image(args[0], args[1])))
    elif cmd == "compare":
        print(json.dumps({"psnr_db": psnr(np.load(args[0]), np.load(args[1]))}))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
