"""Our NumPy timestep/σ placement equals the diffusers schedulers' for every spacing."""

import numpy as np
import pytest

from shanshui.runtime import schedules

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("steps", [1, 7, 25, 50])
def test_timesteps_match_diffusers(spacing, offset, steps):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cfg = {**SD, "timestep_spacing": spacing, "steps_offset": offset}
    euler = EulerDiscreteScheduler(**cfg)
    euler.set_timesteps(steps)
    np.testing.assert_allclose(schedules.timesteps(cfg, steps, "ddim"), euler.timesteps.numpy(), atol=1e-3)
    np.testing.assert_allclose(schedules.sigmas_for(cfg, steps, "ddim"), euler.sigmas.numpy(), rtol=1e-5, atol=1e-6)
    dpm = DPMSolverMultistepScheduler(**cfg)
    dpm.set_timesteps(steps)
    np.testing.assert_array_equal(schedules.timesteps(cfg, steps, "dpm"), dpm.timesteps.numpy())
    np.testing.assert_allclose(schedules.sigmas_for(cfg, steps, "dpm"), dpm.sigmas.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(kind):
    from diffusers import DDPMScheduler

    cfg = {**SD, "beta_schedule": kind}
    np.testing.assert_allclose(schedules.betas_from_config(cfg), DDPMScheduler(**cfg).betas.numpy(), rtol=1e-5)


def test_sigma_to_t_inverts_fractional_timesteps():
    st = schedules.train_sigmas(SD)
    t = np.array([999.0, 500.25, 13.5, 0.0])
    np.testing.assert_allclose(schedules.sigma_to_t(np.interp(t, np.arange(1000), st), st), t, atol=1e-6)


def test_bad_steps_and_spacing_are_user_errors():
    from shanshui.errors import ShanshuiError

    with pytest.raises(ShanshuiError, match="steps must be"):
        schedules.timesteps(SD, 0)
    with pytest.raises(ShanshuiError, match="timestep_spacing"):
        schedules.timesteps({**SD, "timestep_spacing": "random"}, 10)
