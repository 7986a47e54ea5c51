"""The sampler registry: one table from a sampler name to its diffusers scheduler."""

from __future__ import annotations

import inspect

import pytest
import torch

from ldmscale.config import ConfigError
from ldmscale.samplers import (
    DEFAULT_SAMPLERS,
    SAMPLER_NAMES,
    SAMPLERS,
    SamplerEntry,
    get_sampler,
    make_scheduler,
    sampler_label,
)
from ldmscale.sampling import SamplerConfig, generate
from ldmscale.sweep import SweepConfig


@pytest.fixture(scope="module")
def sd_model(tiny_sd_dir):
    from ldmscale.model import load_model

    return load_model(tiny_sd_dir)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_entry_builds_its_scheduler_with_its_options(sd_model, name):
    entry = SAMPLERS[name]
    sched = make_scheduler(sd_model.scheduler_config, name, "trailing")
    assert type(sched).__name__ == entry.scheduler
    assert sched.config.timestep_spacing == "trailing"
    assert sched.config.num_train_timesteps == sd_model.scheduler_config["num_train_timesteps"]
    for key, value in entry.options.items():
        assert sched.config[key] == value
    accepted = inspect.signature(type(sched).step).parameters
    assert set(entry.step_options) <= set(accepted) and "generator" in accepted


def test_registry_names_labels_and_errors():
    assert SAMPLER_NAMES == ("ddim", "ddpm", "dpmpp", "lcm", "ddim_grid")
    assert DEFAULT_SAMPLERS == ("ddim", "ddpm", "dpmpp") == SweepConfig().samplers
    assert sampler_label("dpmpp") == "DPM-Solver++" and sampler_label("mine") == "mine"
    with pytest.raises(ConfigError, match=r"unknown sampler 'euler'.*ddim"):
        get_sampler("euler")
    with pytest.raises(ConfigError, match="timestep_spacing"):
        make_scheduler({}, "ddim", "even")
    with pytest.raises(ConfigError, match="unknown"):
        SweepConfig(samplers=("ddim", "euler"))


def test_a_new_sampler_is_one_entry(sd_model, monkeypatch):
    # Euler scales its input and starts from sigma_max > 1: the loop must not assume DDIM's
    # identity scaling.
    entry = SamplerEntry("euler", "Euler", "EulerDiscreteScheduler", "Euler (test)")
    monkeypatch.setitem(SAMPLERS, "euler", entry)
    cfg = SamplerConfig("euler", 3, 2.0, "trailing")
    res = generate(sd_model, ["a red circle"], [0], cfg, progress=False)
    assert res.latents.shape == (1, *sd_model.latent_shape)
    assert torch.isfinite(res.latents).all()
    ddim = generate(sd_model, ["a red circle"], [0], cfg.replace(name="ddim"), progress=False)
    assert not torch.allclose(res.latents, ddim.latents)
