"""The quality gate: final images of a lower-precision export against fp32, same prompts, seeds and sampler.

Like Apple's ml-stable-diffusion conversion check, a lossy step fails below a PSNR floor. Reported per image:
PSNR and SSIM; per sampling step: the U-Net output SNR of the candidate on the fp32 trajectory's exact inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.eval import evaluate
from shanshui.metrics import psnr, snr_db, ssim
from shanshui.runtime.pipeline import Request, open_pipeline

# Floors per precision; raise them when models allow, never lower them silently.
FLOORS = {"fp16": {"psnr_db": 35.0}, "int8": {"psnr_db": 25.0, "ssim": 0.85}}
GATE_PROMPTS = (
    "一棵青松，青山环绕，云雾缭绕",
    "a quiet lake at dusk with a small boat",
    "青绿山水，瀑布，凉亭",
    "snowy mountains and bare trees in winter",
)
GATE_SEEDS = (0, 1)


class _Recorder:
    """Wraps a U-Net callable and keeps every (x, t, cond, out) it sees."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __call__(self, x, t, cond):
        out = self.unet(x, t, cond)
        self.calls.append((x, t, cond, out))
        return out


def check_quality(reference: Path, candidate: Path, precision: str, prompts=None, seeds=None,
                  steps: int = 10, threads: int | None = None, memory=(None, None)) -> dict:
    """Compare two exports image by image (GATE_PROMPTS × GATE_SEEDS by default); returns the report with `passed`.
    memory: the runtime.lowmem strategies (reference, candidate) to paint with; (None, None): all resident."""

    prompts, seeds = prompts or GATE_PROMPTS, seeds or GATE_SEEDS
    ref_pipe = open_pipeline(reference, threads=threads, memory=memory[0])
    cand_pipe = open_pipeline(candidate, threads=threads, memory=memory[1])
    recorder = _Recorder(ref_pipe.components.unet)
    ref_pipe.components.unet = recorder
    images, step_snr, pairs = [], [], []
    for prompt in prompts:
        for seed in seeds:
            req = Request(prompt, steps=steps, seed=seed, guidance=5.0)
            recorder.calls.clear()
            a = _painted(ref_pipe, req)
            b = _painted(cand_pipe, req)
            pairs.append((a, b))
            images.append({"prompt": prompt, "seed": seed, "psnr_db": round(psnr(a, b), 2), "ssim": round(ssim(a, b), 4)})
            step_snr.append([snr_db(out, cand_pipe.components.unet(x, t, c)) for x, t, c, out in recorder.calls])
    images += _img2img_images(ref_pipe, cand_pipe, [a for a, _ in pairs[: len(seeds)]], prompts[-1], seeds, steps)
    floors = FLOORS[precision]
    worst = {"psnr_db": min(i["psnr_db"] for i in images), "ssim": min(i["ssim"] for i in images)}
    report = {
        "precision": precision,
        "floors": floors,
        "images": images,
        "worst": worst,
        "mean": {"psnr_db": round(float(np.mean([i["psnr_db"] for i in images])), 2),
                 "ssim": round(float(np.mean([i["ssim"] for i in images])), 4)},
        "unet_step_snr_db": [round(float(np.mean(col)), 2) for col in zip(*step_snr)],  # mean over images, per step
        "steps": steps,
    }
    report["attribute_agreement"] = attribute_agreement(pairs)
    report["passed"] = all(worst[k] >= v for k, v in floors.items())
    return report


def _painted(pipe, req: Request) -> np.ndarray:
    """The image; a low-memory pipeline then frees what it loaded, so the other one paints with the memory."""
    image = pipe(req).images[0]
    getattr(pipe.components, "free", lambda: None)()
    return image


def _img2img_images(ref_pipe, cand_pipe, inits, prompt: str, seeds, steps: int, strength: float = 0.6) -> list[dict]:
    """Image-to-image rows of the gate (when both exports have a VAE encoder): fp32's first paintings repainted."""

    if not (getattr(ref_pipe.components, "has_encoder", False) and getattr(cand_pipe.components, "has_encoder", False)):
        return []
    rows = []
    for init, seed in zip(inits, seeds):
        req = Request(prompt, steps=steps, seed=seed, guidance=5.0, init_image=init, strength=strength)
        a, b = _painted(ref_pipe, req), _painted(cand_pipe, req)
        rows.append({"prompt": prompt, "seed": seed, "mode": f"img2img (strength {strength})",
                     "psnr_db": round(psnr(a, b), 2), "ssim": round(ssim(a, b), 4)})
    return rows


def attribute_agreement(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """How often `shanshui eval`'s attribute classifier reads the same attributes in the candidate's image as in
    fp32's (reported, not a floor). Uses the classifier only if `shanshui eval` trained it on this machine."""
    try:

        net = evaluate.cached_classifier()
    except ImportError:  # no torch
        net = None
    if net is None:
        return {"available": False, "why": "the attribute classifier is not trained on this machine (run `shanshui eval` once)"}
    ref = evaluate.predict(net, evaluate.thumbnails([a for a, _ in pairs]))
    got = evaluate.predict(net, evaluate.thumbnails([b for _, b in pairs]))
    per = {k: round(float(np.mean(ref[k] == got[k])), 3) for k in ref}
    return {"available": True, "per_attribute": per, "mean": round(float(np.mean(list(per.values()))), 3)}


def enforce(report: dict) -> None:
    """Raise a one-line error when a gate report failed its floors."""
    if report["passed"]:
        return
    failed = ", ".join(f"{k} {report['worst'][k]} < {v}" for k, v in report["floors"].items() if report["worst"][k] < v)
    raise ShanshuiError(f"{report['precision']} export fails the quality gate against fp32 (worst image: {failed}); "
                        "nothing was written — use a higher precision, or --no-check to skip the gate")
