"""The NumPy samplers reach the same final latent as diffusers' schedulers on the same model, seed and steps."""

import numpy as np
import pytest

from shanshui.runtime.denoiser import GuidedDenoiser
from shanshui.runtime.samplers import SAMPLERS, SIGMA_SCHEDULES, TIMESTEP_RULES

# Final latents agree to this fraction of their largest magnitude (float32 network, float64 vs float32 arithmetic).
REL_TOL = 2e-3

CASES = [  # (our sampler, diffusers scheduler, scheduler settings)
    ("ddim", "DDIMScheduler", dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False)),
    ("ddim", "DDIMScheduler", dict(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)),
    ("euler", "EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1)),
    ("euler", "EulerDiscreteScheduler", dict(timestep_spacing="linspace")),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing")),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(timestep_spacing="leading", steps_offset=1)),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(timestep_spacing="linspace", prediction_type="v_prediction")),
    # the shipped tiny model's schedule: zero terminal SNR, v-prediction, trailing spacing (first step at σ ≈ 4096)
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True)),
    ("euler", "EulerDiscreteScheduler", dict(timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True)),
    ("ddim", "DDIMScheduler", dict(timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                   set_alpha_to_one=False, clip_sample=False)),
    # Karras σ (use_karras_sigmas), on the SD schedule and on the shipped model's zero-SNR v-prediction one
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True)),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction",
                                                           rescale_betas_zero_snr=True, timestep_spacing="trailing")),
    ("euler_karras", "EulerDiscreteScheduler", dict(use_karras_sigmas=True)),
]


@pytest.fixture(scope="module")
def torch_parts(tiny_model):
    from shanshui.runtime.backends import TorchComponents

    parts = TorchComponents.from_folder(tiny_model, device="cpu")
    rng = np.random.default_rng(1)
    cond = rng.standard_normal((1, 64, 256)).astype(np.float32)
    uncond = rng.standard_normal((1, 64, 256)).astype(np.float32)
    return parts, cond, uncond


@pytest.mark.parametrize("sampler,scheduler_cls,settings", CASES)
def test_final_latent_matches_diffusers(torch_parts, sampler, scheduler_cls, settings):
    import diffusers
    import torch

    parts, cond, uncond = torch_parts
    cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **settings)
    steps, guidance = 8, 5.0
    noise = np.random.default_rng(0).standard_normal((1, 4, 32, 32))

    sched = getattr(diffusers, scheduler_cls)(**cfg)
    sched.set_timesteps(steps)
    latents = torch.from_numpy(noise).float() * sched.init_noise_sigma
    emb = torch.from_numpy(np.concatenate([uncond, cond]))
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents] * 2), t)
            out_u, out_c = parts.un(inp, t, emb).sample.chunk(2)
            latents = sched.step(out_u + guidance * (out_c - out_u), t, latents).prev_sample
    ref = latents.numpy()

    sigmas = SIGMA_SCHEDULES[sampler](cfg, steps)
    model = GuidedDenoiser.from_scheduler(parts.unet, cond, uncond, guidance, cfg, TIMESTEP_RULES.get(sampler))
    # diffusers' Euler keeps latents in σ-space; DDIM and DPM-Solver keep DDPM latents (init_noise_sigma = 1)
    scale = float(sched.init_noise_sigma) if scheduler_cls == "EulerDiscreteScheduler" else np.sqrt(1 + sigmas[0] ** 2)
    x = SAMPLERS[sampler](model, noise * scale, sigmas)
    ours = x / np.sqrt(1 + sigmas[-1] ** 2)

    assert model.calls == steps
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < REL_TOL, f"{sampler} vs {scheduler_cls}: relative error {err:.2e}"


def test_ancestral_sampler_is_seeded():
    """euler_a draws its noise from the rng it is given: same seed, same result; other seed, other result."""
    cfg = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", timestep_spacing="trailing")
    sigmas = SIGMA_SCHEDULES["euler_a"](cfg, 6)
    model = lambda x, s: x * 0.5  # noqa: E731  (any deterministic denoiser)
    x0 = np.ones((1, 4, 8, 8)) * sigmas[0]
    a = SAMPLERS["euler_a"](model, x0, sigmas, rng=np.random.default_rng(3))
    b = SAMPLERS["euler_a"](model, x0, sigmas, rng=np.random.default_rng(3))
    c = SAMPLERS["euler_a"](model, x0, sigmas, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_samplers_share_one_signature():
    import inspect

    sigs = {name: list(inspect.signature(fn).parameters) for name, fn in SAMPLERS.items()}
    assert all(s == ["model", "x", "sigmas", "rng", "callback"] for s in sigs.values()), sigs
