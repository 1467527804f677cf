"""Noise schedules as small NumPy functions, read from a diffusers scheduler_config.json.

Everything is in the k-diffusion (variance-exploding) parametrisation: x = x0 + σ·ε, with
σ(t) = sqrt((1 - ᾱ_t) / ᾱ_t). A DDPM latent x_vp relates to it by x_vp = x / sqrt(1 + σ²).
"""

from __future__ import annotations

import numpy as np

from shanshui.errors import ShanshuiError


# diffusers' defaults per scheduler class for what a config may leave out: a config without timestep_spacing means
# "leading" for the DDIM/DDPM/PNDM family and "linspace" for the k-diffusion-style and multistep solvers.
LEADING_CLASSES = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LCMScheduler", "TCDScheduler",
                   "DDIMParallelScheduler", "DDPMParallelScheduler")
ALPHA_TO_ONE_FALSE = ("PNDMScheduler",)


def with_class_defaults(cfg: dict) -> dict:
    """The config with diffusers' defaults of its `_class_name` filled in (a config naming no class: DDIM's)."""
    cls = cfg.get("_class_name") or "DDIMScheduler"
    defaults = {"timestep_spacing": "leading" if cls in LEADING_CLASSES else "linspace", "steps_offset": 0,
                "set_alpha_to_one": cls not in ALPHA_TO_ONE_FALSE, "prediction_type": "epsilon"}
    return {**defaults, **{k: v for k, v in cfg.items() if v is not None}}


def portable_config(cfg: dict) -> dict:
    """A scheduler config to write: class defaults made explicit, and steps_offset 1 where it changes nothing
    (it only shifts `leading` timesteps) so diffusers' pipelines do not warn about it on every load."""
    out = with_class_defaults(cfg)
    if out["timestep_spacing"] != "leading":
        out["steps_offset"] = 1
    return out


ZERO_SNR_FLOOR = 2.0**-24  # ᾱ at the last timestep of a zero-terminal-SNR schedule, as diffusers' samplers clamp it


def betas_from_config(cfg: dict) -> np.ndarray:
    """β_t for t = 0..T-1 (float64), as diffusers computes them (incl. rescale_betas_zero_snr)."""
    n = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 0.00085)), float(cfg.get("beta_end", 0.012))
    kind = cfg.get("beta_schedule", "scaled_linear")
    if kind == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float32).astype(np.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        t = np.arange(n, dtype=np.float64)
        betas = np.minimum(1 - f((t + 1) / n) / f(t / n), 0.999)
    else:
        raise ShanshuiError(f"beta_schedule {kind!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2")
    return rescale_zero_terminal_snr(betas) if cfg.get("rescale_betas_zero_snr", False) else betas


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(ᾱ) so that ᾱ_T = 0 and ᾱ_0 is unchanged."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    return 1.0 - np.append(ab[0], ab[1:] / ab[:-1])


def alphas_cumprod(cfg: dict) -> np.ndarray:
    """ᾱ_t for t = 0..T-1; a zero terminal ᾱ is floored at 2⁻²⁴ (σ_max ≈ 4096) as diffusers' samplers do."""
    ab = np.cumprod(1.0 - betas_from_config(cfg))
    return np.maximum(ab, ZERO_SNR_FLOOR) if cfg.get("rescale_betas_zero_snr", False) else ab


def train_sigmas(cfg: dict) -> np.ndarray:
    """σ at every training timestep t = 0..T-1, increasing."""
    ab = alphas_cumprod(cfg)
    return np.sqrt((1 - ab) / ab)


def sigma_to_t(sigma: np.ndarray | float, sigmas_t: np.ndarray) -> np.ndarray:
    """Inverse of σ(t) by linear interpolation in σ, the exact inverse of how diffusers places fractional timesteps."""
    return np.interp(sigma, sigmas_t, np.arange(len(sigmas_t), dtype=np.float64))


def timesteps(cfg: dict, steps: int, convention: str = "ddim") -> np.ndarray:
    """Timesteps (descending, float64) for `steps` sampling steps, following cfg's timestep_spacing.

    convention "ddim" is DDIM's and Euler's placement; "dpm" is DPM-Solver's, which for linspace and leading
    spacing lays out steps + 1 points and drops the last (as diffusers' DPMSolverMultistepScheduler does).
    """
    n = int(cfg.get("num_train_timesteps", 1000))
    if not 0 < steps <= n:
        raise ShanshuiError(f"steps must be between 1 and {n}, got {steps}")
    spacing = cfg.get("timestep_spacing", "leading")
    extra = 1 if convention == "dpm" else 0
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, steps + extra, dtype=np.float64)
        return (ts.round() if extra else ts)[::-1][: steps].copy()
    if spacing == "leading":
        ratio = n // (steps + extra)
        ts = (np.arange(0, steps + extra) * ratio).round()[::-1][:steps]
        return ts.astype(np.float64) + int(cfg.get("steps_offset", 0))
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / steps)).astype(np.float64) - 1
    raise ShanshuiError(f"timestep_spacing {spacing!r} is not supported; use linspace, leading or trailing")


def sigmas_for(cfg: dict, steps: int, convention: str = "ddim") -> np.ndarray:
    """σ at each step's timestep (interpolated in σ for fractional t), then a final σ = 0."""
    st = train_sigmas(cfg)
    sig = np.interp(timesteps(cfg, steps, convention), np.arange(len(st)), st)
    return np.append(sig, 0.0)


def ddim_sigmas(cfg: dict, steps: int) -> np.ndarray:
    """DDIM's σ sequence: integer timesteps, then a final σ of 0 or σ(t=0) per set_alpha_to_one.

    (On an uneven linspace grid diffusers steps to t - T/steps rather than to the next timestep; we step to the next.)
    """
    st = train_sigmas(cfg)
    ts = np.round(timesteps(cfg, steps)).astype(int)
    final = 0.0 if cfg.get("set_alpha_to_one", True) else st[0]
    return np.append(st[ts], final)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) σ schedule, with a final 0."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)


def karras_for(cfg: dict, steps: int) -> np.ndarray:
    """Karras σ between the model's own σ(t=0) and σ(t=T-1) (diffusers' `use_karras_sigmas=True`), then 0."""
    st = train_sigmas(cfg)
    return karras_sigmas(float(st[0]), float(st[-1]), steps)


def sigma_to_t_log(sigma: np.ndarray | float, sigmas_t: np.ndarray) -> np.ndarray:
    """Inverse of σ(t) interpolated in log σ: where diffusers places the timesteps of Karras σ."""
    return np.interp(np.log(np.maximum(sigma, 1e-10)), np.log(sigmas_t), np.arange(len(sigmas_t), dtype=np.float64))
