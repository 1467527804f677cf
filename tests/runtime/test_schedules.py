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


@pytest.mark.parametrize("cls,convention", [("DDIMScheduler", "ddim"), ("PNDMScheduler", "ddim"),
                                            ("EulerDiscreteScheduler", "ddim"), ("EulerAncestralDiscreteScheduler", "ddim"),
                                            ("DPMSolverMultistepScheduler", "dpm")])
def test_a_config_without_spacing_gets_its_class_default(cls, convention):
    """diffusers' DPM-Solver and Euler default to linspace, DDIM/PNDM to leading: read a bare config as diffusers does."""
    import diffusers

    from shanshui.runtime.schedules import timesteps, with_class_defaults

    cfg = {"_class_name": cls, "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "beta_end": 0.012}
    sched = getattr(diffusers, cls).from_config(cfg)
    assert sched.config.timestep_spacing == with_class_defaults(cfg)["timestep_spacing"]
    if cls == "PNDMScheduler":
        assert with_class_defaults(cfg)["set_alpha_to_one"] is False
        return  # PNDM's own PRK/PLMS timestep layout is not one of our samplers'
    sched.set_timesteps(10)
    ours = timesteps(with_class_defaults(cfg), 10, convention)
    np.testing.assert_allclose(np.asarray(sched.timesteps, dtype=np.float64), ours, atol=0.5)


def test_portable_config_sets_steps_offset_only_where_it_changes_nothing():
    from shanshui.runtime.schedules import portable_config, timesteps

    trailing = {"_class_name": "DDIMScheduler", "timestep_spacing": "trailing", "steps_offset": 0}
    out = portable_config(trailing)
    assert out["steps_offset"] == 1
    np.testing.assert_array_equal(timesteps(out, 7), timesteps(trailing, 7))
    leading = {"_class_name": "DDIMScheduler", "steps_offset": 0}
    assert portable_config(leading)["steps_offset"] == 0 and portable_config(leading)["timestep_spacing"] == "leading"


def test_init_and_export_write_a_scheduler_diffusers_does_not_warn_about(tiny_model, tiny_export):
    import json

    for root in (tiny_model, tiny_export):
        cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        assert cfg["steps_offset"] == 1 and cfg["timestep_spacing"] == "trailing"
