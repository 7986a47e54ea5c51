"""The objective protocol, its registry, and the text-to-image objective (no training here;
objectives inside the trainer are tested in test_train.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from ldmscale.cache import Conditioning
from ldmscale.config import Config, ConfigError
from ldmscale.objectives import (
    OBJECTIVES,
    Objective,
    SetupContext,
    TextToImage,
    build_objective,
    make_noise_scheduler,
    min_snr_weights,
    read_options,
)
from ldmscale.train import TrainConfig

C, H, T, D = 4, 8, 8, 16


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights(prediction_type: str) -> None:
    sched = make_noise_scheduler(prediction_type)
    t = torch.tensor([0, 100, 500, 999])
    w = min_snr_weights(sched, t, 5.0, prediction_type)
    abar = sched.alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    expect = torch.clamp(snr, max=5.0) / (snr + (1 if prediction_type == "v_prediction" else 0))
    assert torch.allclose(w, expect)
    # Low-noise steps (high SNR) are down-weighted, high-noise steps keep weight ~1 (eps).
    assert w[0] < w[-1] or prediction_type == "v_prediction"
    assert float(w.max()) <= 1.0 + 1e-6


def test_objective_targets_and_caption_dropout():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            seen.update(x=x, t=t, ctx=encoder_hidden_states)
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    null = torch.full((1, T, D), 7.0)
    batch = {
        "latent_mean": torch.randn(64, C, H, H),
        "latent_std": torch.zeros(64, C, H, H),
        "embeddings": torch.zeros(64, T, D),
    }
    for pred in ("epsilon", "v_prediction"):
        sched = make_noise_scheduler(pred)
        obj = TextToImage(
            sched, null, scaling_factor=0.5, prediction_type=pred, caption_dropout=0.5
        )
        loss = obj.loss(Spy(), batch, torch.Generator().manual_seed(1))
        # Reproduce the draws to recompute the target.
        g = torch.Generator().manual_seed(1)
        torch.randn(batch["latent_mean"].shape, generator=g)
        noise = torch.randn(batch["latent_mean"].shape, generator=g)
        t = torch.randint(0, 1000, (64,), generator=g)
        z = batch["latent_mean"] * 0.5
        assert torch.equal(seen["t"], t)
        assert torch.allclose(seen["x"], sched.add_noise(z, noise, t))
        target = noise if pred == "epsilon" else sched.get_velocity(z, noise, t)
        assert torch.allclose(loss, target.square().mean())
        dropped = (seen["ctx"] == 7.0).all(dim=(1, 2))
        assert 10 < int(dropped.sum()) < 54  # about half the captions replaced by null
        assert ((seen["ctx"] == 0).all(dim=(1, 2)) | dropped).all()
    assert sched.config.beta_schedule == "scaled_linear"
    assert sched.config.num_train_timesteps == 1000
    assert math.isclose(sched.config.beta_start, 0.00085) and math.isclose(
        sched.config.beta_end, 0.012
    )


def test_t2i_builder_reads_the_top_level_fields_and_setup_the_data():
    cfg = TrainConfig(prediction_type="v_prediction", caption_dropout=0.25, min_snr_gamma=5.0)
    obj = build_objective(cfg)
    assert isinstance(obj, TextToImage) and obj.name == "t2i"
    assert (obj.prediction_type, obj.caption_dropout, obj.min_snr_gamma) == (
        "v_prediction",
        0.25,
        5.0,
    )
    # Protocol defaults: no overrides, no state, SD's schedule with its prediction type.
    assert obj.unet_overrides() == {} and obj.state_dict() == {}
    hints = obj.export_hints()
    assert hints.sampler_hint is None
    assert hints.scheduler.config.prediction_type == "v_prediction"
    assert hints.scheduler.config.beta_schedule == "scaled_linear"
    with pytest.raises(ValueError, match="keeps no state"):
        obj.load_state_dict({"target": 1})
    with pytest.raises(RuntimeError, match="setup"):  # no data constants yet
        obj.loss(None, {"latent_mean": torch.zeros(1)}, torch.Generator())
    null = torch.randn(1, T, D)
    cond = Conditioning(rows={}, null_embedding=null, scaling_factor=0.25)
    obj.setup(SetupContext(torch.nn.Identity(), None, None, cfg, cond, torch.device("cpu")))
    assert obj.null_embedding is null and obj.scaling_factor == 0.25


def test_registry_errors_name_the_fix(monkeypatch):
    with pytest.raises(
        ConfigError, match=r"unknown objective 'nonesuch'.*available: \[.*'sr', 't2i'\]"
    ):
        build_objective(TrainConfig(objective="nonesuch"))
    with pytest.raises(ConfigError, match=r"'t2i' takes no options.*prediction_type"):
        build_objective(TrainConfig(objective_options={"gamma": 5}))
    with pytest.raises(ConfigError, match=r"teacher.*uses no teacher.*init_from"):
        build_objective(TrainConfig(teacher="runs/c64/model"))

    @dataclass
    class Options(Config):
        decay: float = 0.95

    class NeedsTeacher(Objective):
        name = "needs_teacher"
        uses_teacher = True

        def __init__(self, decay: float):
            self.decay = decay

    monkeypatch.setitem(
        OBJECTIVES, "needs_teacher", lambda cfg: NeedsTeacher(read_options(Options, cfg).decay)
    )
    cfg = TrainConfig(objective="needs_teacher", teacher="some/model")
    assert build_objective(cfg.replace(objective_options={"decay": 0.5})).decay == 0.5
    assert build_objective(cfg).decay == 0.95
    with pytest.raises(ConfigError, match=r"set TrainConfig.teacher"):
        build_objective(cfg.replace(teacher=None))
    with pytest.raises(
        ConfigError,
        match=r"objective_options of objective 'needs_teacher'.*unknown key.*\['decy'\].*\['decay'\]",
    ):
        build_objective(cfg.replace(objective_options={"decy": 0.5}))
    with pytest.raises(NotImplementedError, match="no loss"):
        NeedsTeacher(0.5).loss(None, {}, torch.Generator())


def test_new_config_fields_leave_old_configs_unchanged():
    plain = TrainConfig()
    assert not {"init_from", "teacher", "objective_options"} & set(plain.to_dict())
    assert TrainConfig.from_dict(plain.to_dict()) == plain
    full = plain.replace(
        init_from="runs/c64/model", teacher="runs/c128/model", objective_options={"a": {"b": 1}}
    )
    d = full.to_dict()
    assert d["init_from"] == "runs/c64/model" and d["objective_options"] == {"a": {"b": 1}}
    assert TrainConfig.from_dict(d) == full
    with pytest.raises(ConfigError, match="objective_options"):
        TrainConfig(objective_options=[1, 2])
    with pytest.raises(ConfigError, match="init_from"):
        TrainConfig(init_from=" ")
