"""From a network `unet(x, t, cond) -> ε or v` to the samplers' `model(x, σ) -> x0`, with classifier-free guidance."""

from __future__ import annotations

from typing import Callable

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.runtime.schedules import sigma_to_t
from shanshui.runtime.schedules import train_sigmas

UNet = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (B2,C,h,w) f32, (B2,) f32, (B2,L,D) f32 -> (B2,C,h,w)


class GuidedDenoiser:
    """k-diffusion-style denoiser: scales x into the network's input space, maps σ to t, applies guidance.

    cond / uncond: (B, L, D) text embeddings; guidance == 1 (or uncond None) runs the conditional branch only.
    A scheduler's clip_sample is ignored: clamping x0 to ±1 is meant for pixels, and latents span about ±4.
    """

    def __init__(self, unet: UNet, cond: np.ndarray, uncond: np.ndarray | None, guidance: float,
                 sigmas_t: np.ndarray, prediction_type: str = "epsilon", t_rule: Callable | None = None):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ShanshuiError(f"prediction_type {prediction_type!r} is not supported; use epsilon or v_prediction")
        self.unet, self.guidance, self.sigmas_t, self.prediction_type = unet, float(guidance), sigmas_t, prediction_type
        self.t_rule = t_rule or sigma_to_t  # (σ, training σ table) -> timestep
        self.use_cfg = uncond is not None and self.guidance != 1.0
        self.cond = np.concatenate([uncond, cond]).astype(np.float32) if self.use_cfg else cond.astype(np.float32)
        self.calls = 0

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        c_in = 1.0 / np.sqrt(sigma**2 + 1.0)  # to the DDPM latent x_vp
        x_in = np.concatenate([x, x]) if self.use_cfg else x  # (B2, C, h, w)
        t = np.full(len(x_in), self.t_rule(sigma, self.sigmas_t), dtype=np.float32)
        out = self.unet((x_in * c_in).astype(np.float32), t, self.cond).astype(np.float64)
        self.calls += 1
        if self.use_cfg:
            out_uncond, out_cond = np.split(out, 2)
            out = out_uncond + self.guidance * (out_cond - out_uncond)
        if self.prediction_type == "epsilon":
            return x - sigma * out
        return x / (sigma**2 + 1.0) - out * sigma * c_in  # v-prediction: c_skip·x + c_out·v

    @classmethod
    def from_scheduler(cls, unet: UNet, cond, uncond, guidance: float, cfg: dict,
                       t_rule: Callable | None = None) -> "GuidedDenoiser":
        """Settings from a diffusers scheduler_config.json; t_rule as the sampler's entry in TIMESTEP_RULES."""
        return cls(unet, cond, uncond, guidance, train_sigmas(cfg), cfg.get("prediction_type", "epsilon"), t_rule)
