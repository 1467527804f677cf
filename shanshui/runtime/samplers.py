"""Samplers in NumPy, one shared signature: sample(model, x, sigmas, rng=None, callback=None) -> x, and the registry:
SAMPLERS (name -> function), SIGMA_SCHEDULES (name -> the σ placement of the diffusers scheduler it matches) and
TIMESTEP_RULES (name -> σ-to-timestep rule, where it is not the default interpolation in σ).

`model(x, sigma) -> denoised x0` works in the variance-exploding space (see schedules.py); `x` starts as
noise · sqrt(1 + σ_0²) and `sigmas` ends with the final σ (0, or σ(t=0) for DDIM without set_alpha_to_one).
"""

from __future__ import annotations

import enum
from typing import Callable

import numpy as np

from shanshui.runtime import schedules

Denoiser = Callable[[np.ndarray, float], np.ndarray]
Callback = Callable[[int, int], None]  # (step index, total steps)


def _to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    return (x - denoised) / sigma


def sample_euler(model: Denoiser, x: np.ndarray, sigmas: np.ndarray, rng=None, callback: Callback | None = None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        if callback:
            callback(i, len(sigmas) - 1)
    return x


def sample_ddim(model: Denoiser, x: np.ndarray, sigmas: np.ndarray, rng=None, callback: Callback | None = None):
    """DDIM with η = 0 (Song et al. 2021), written in σ-space, where it is one Euler step per timestep."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        eps = _to_d(x, sigmas[i], denoised)
        x = denoised + eps * sigmas[i + 1]
        if callback:
            callback(i, len(sigmas) - 1)
    return x


def sample_euler_ancestral(model: Denoiser, x: np.ndarray, sigmas: np.ndarray, rng=None, callback: Callback | None = None):
    """Ancestral Euler (k-diffusion): an Euler step down to σ_down, then fresh noise up to σ_{i+1}."""
    rng = rng if rng is not None else np.random.default_rng(0)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        s, s_next = sigmas[i], sigmas[i + 1]
        s_up = min(s_next, np.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
        s_down = np.sqrt(s_next**2 - s_up**2)
        x = x + _to_d(x, s, denoised) * (s_down - s)
        if s_next > 0:
            x = x + rng.standard_normal(x.shape) * s_up
        if callback:
            callback(i, len(sigmas) - 1)
    return x


def sample_dpmpp_2m(model: Denoiser, x: np.ndarray, sigmas: np.ndarray, rng=None, callback: Callback | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-SNR, first order on the first and last step."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            x = denoised
        else:
            h = np.log(s) - np.log(s_next)  # λ = -log σ
            d = denoised
            if old_denoised is not None:
                r = (np.log(sigmas[i - 1]) - np.log(s)) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s) * x - np.expm1(-h) * d
        old_denoised = denoised
        if callback:
            callback(i, len(sigmas) - 1)
    return x


SAMPLERS = {
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
}
SAMPLERS["dpmpp_2m_karras"] = sample_dpmpp_2m
SAMPLERS["euler_karras"] = sample_euler
SIGMA_SCHEDULES = {  # which σ placement each sampler uses (the one of the diffusers scheduler it matches)
    "ddim": lambda cfg, n: schedules.ddim_sigmas(cfg, n),
    "euler": lambda cfg, n: schedules.sigmas_for(cfg, n, "ddim"),
    "euler_a": lambda cfg, n: schedules.sigmas_for(cfg, n, "ddim"),
    "dpmpp_2m": lambda cfg, n: schedules.sigmas_for(cfg, n, "dpm"),
    "dpmpp_2m_karras": schedules.karras_for,
    "euler_karras": schedules.karras_for,
}
# σ -> the network's timestep, where it differs from interpolating σ(t): diffusers' Karras schedulers interpolate in
# log σ (DPM-Solver then rounds to whole timesteps, Euler keeps them fractional).
TIMESTEP_RULES = {
    "dpmpp_2m_karras": lambda sigma, sigmas_t: np.round(schedules.sigma_to_t_log(sigma, sigmas_t)),
    "euler_karras": schedules.sigma_to_t_log,
}

Sampler = enum.Enum("Sampler", {name: name for name in SAMPLERS}, type=str)  # the CLI's choices
