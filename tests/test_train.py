"""Tests for ldmscale.train / ldmscale.objectives / `ldmscale train` (tiny random caches)."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_vae
from ldmscale.config import Config, ConfigError
from ldmscale.objectives import (
    OBJECTIVES,
    ExportHints,
    TextToImage,
    load_teacher,
    make_noise_scheduler,
    read_options,
)
from ldmscale.surgery import SurgeryError
from ldmscale.train import (
    CheckpointError,
    DataOrder,
    RunMismatchError,
    TrainConfig,
    TrainingDivergedError,
    eval_dir,
    find_resume_checkpoint,
    log_spaced_steps,
    step_generator,
    train,
    verify_checkpoint,
)

N, C, H, T, D = 32, 4, 8, 8, 16
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, str]:
    """Random latent + embedding caches (cache format of ldmscale.cache) and a tiny VAE folder."""

    root = tmp_path_factory.mktemp("train_caches")
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "latent_mean": torch.randn(N, C, H, H, generator=g),
            "latent_std": torch.rand(N, C, H, H, generator=g) * 0.1,
        },
        str(root / "lat.safetensors"),
        metadata={"scaling_factor": "0.5"},
    )
    save_file(
        {
            "embeddings": torch.randn(N, T, D, generator=g),
            "null_embedding": torch.zeros(1, T, D),
        },
        str(root / "emb.safetensors"),
        metadata={"encoder_spec": json.dumps({"kind": "minilm", "path": None, "max_length": T})},
    )
    torch.manual_seed(0)
    tiny_vae(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=C,
    ).save_pretrained(root / "vae")
    return {
        "latents": str(root / "lat.safetensors"),
        "embeddings": str(root / "emb.safetensors"),
        "vae": str(root / "vae"),
    }


def make_cfg(caches: dict[str, str], run_dir: Path, **kw) -> TrainConfig:
    base = dict(
        run_dir=str(run_dir),
        c=8,
        layers_per_block=1,
        steps=4,
        batch_size=4,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=2,
        log_every=2,
        keep_last=2,
        ema_decay=0.99,
        **caches,
    )
    base.update(kw)
    return TrainConfig(**base)


def unet_file(folder: Path) -> Path:
    return folder / "diffusion_pytorch_model.safetensors"


# ----------------------------------------------------------------------------- unit


def test_data_order_is_sharded_permutations():
    order = DataOrder(10, seed=3)
    # Global batch 4 over 2 processes covers exactly what one process would take.
    for step in range(6):
        one = order.indices(step, 4, rank=0, world=1)
        two = torch.cat([order.indices(step, 4, rank=r, world=2) for r in range(2)])
        assert torch.equal(one, two)
    stream = torch.cat([order.indices(s, 5, 0, 1) for s in range(4)])  # 2 epochs of 10
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # a fresh permutation each epoch
    assert torch.equal(DataOrder(10, seed=3).perm(1), order.perm(1))
    assert not torch.equal(DataOrder(10, seed=4).perm(0), order.perm(0))


def test_step_generator_depends_on_seed_step_rank():
    draw = [
        torch.randn(3, generator=step_generator(*a))
        for a in [(0, 5, 0), (0, 5, 0), (0, 6, 0), (0, 5, 1), (1, 5, 0)]
    ]
    assert torch.equal(draw[0], draw[1])
    assert all(not torch.equal(draw[0], d) for d in draw[2:])


def test_config_roundtrip_and_validation(tmp_path, caches):
    cfg = make_cfg(caches, tmp_path / "run", lr_schedule="cosine", prediction_type="v_prediction")
    for suffix in (".toml", ".json"):
        assert TrainConfig.load(cfg.save(tmp_path / f"c{suffix}")) == cfg
    with pytest.raises(ConfigError, match="lr_schedule"):
        cfg.replace(lr_schedule="linearish")
    with pytest.raises(ConfigError, match="caption_dropout"):
        cfg.replace(caption_dropout=1.0)
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"stepz": 3})
    # A text encoder the export could not write is refused before training, not after.
    with pytest.raises(ConfigError, match="text_encoder.*TextEncoderSpec"):
        cfg.replace(text_encoder={"kind": "t5", "path": None, "max_length": 16})


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, caches) -> tuple[TrainConfig, Path]:
    """One uninterrupted 6-step run (checkpoints at 2, 4, 6; the last two kept). Do not modify."""
    cfg = make_cfg(caches, tmp_path_factory.mktemp("train_ref") / "run", steps=6)
    return cfg, train(cfg, progress=False)


def copy_run(finished_run, dest: Path) -> tuple[TrainConfig, Path]:
    cfg, run = finished_run
    shutil.copytree(run, dest)
    return cfg.replace(run_dir=str(dest)), dest


def test_train_writes_run_folder_and_exports_model(finished_run):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    cfg, run = finished_run
    ck = run / "checkpoints"
    last = ck / "step-0000006"
    assert (ck / "LATEST").read_text().strip() == last.name
    assert sorted(p.name for p in ck.glob("step-*")) == [
        "step-0000004",
        "step-0000006",
    ]  # keep_last=2
    state = torch.load(last / "training_state.pt", weights_only=True)
    assert state["step"] == 6 and state["images_seen"] == 24
    assert {"optimizer", "lr_scheduler", "ema", "objective"} <= set(state)
    assert state["objective"] == {} and not {"rng", "epoch"} & set(state)  # t2i keeps no state
    assert state["ema"]["num_updates"] == 6 and state["lr_scheduler"]["last_epoch"] == 6
    meta = json.loads((last / "meta.json").read_text())
    assert (
        meta["num_processes"] == 1 and "unet/diffusion_pytorch_model.safetensors" in meta["files"]
    )

    unet = UNet2DConditionModel.from_pretrained(last / "unet")
    assert unet.config.cross_attention_dim == D and unet.config.sample_size == H

    model = run / "model"
    info = json.loads((model / "ldmscale_model.json").read_text())
    assert info["format"] == "ldmscale-model/1"
    assert info["unet_spec"]["context_dim"] == D and info["unet_spec"]["context_len"] == T
    assert info["unet_spec"]["c"] == 8 and info["unet_spec"]["latent_size"] == H
    assert info["scaling_factor"] == 0.5 and info["prediction_type"] == "epsilon"
    assert info["train_steps"] == 6 and info["text_encoder"]["kind"] == "minilm"
    assert info["code_version"].startswith("0.")
    assert 0 < info["norm_cost"] < 0.01 and info["gflops_dense"] > 0 and info["gflops_xla"] > 0
    assert TrainConfig.from_dict(info["train_config"]) == cfg
    # The exported UNet is the EMA, identical to the last checkpoint's unet_ema.
    assert unet_file(model / "unet").read_bytes() == unet_file(last / "unet_ema").read_bytes()
    ema = load_file(str(unet_file(model / "unet")))
    raw = load_file(str(unet_file(last / "unet")))
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
    sched = DDPMScheduler.from_pretrained(model / "scheduler")
    assert (
        sched.config.beta_schedule == "scaled_linear" and sched.config.prediction_type == "epsilon"
    )
    assert AutoencoderKL.from_pretrained(model / "vae").config.latent_channels == C

    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    for r in lines:
        assert set(r) == {"step", "loss", "lr", "images_seen", "train_compute", "wall_time"}
        assert math.isfinite(r["loss"]) and r["images_seen"] == r["step"] * 4
        assert math.isclose(r["train_compute"], info["norm_cost"] * r["step"])
    assert lines[0]["lr"] == pytest.approx(0.5e-3)  # linear warm-up over 2 steps
    assert lines[1]["lr"] == pytest.approx(1e-3)


def test_rerun_same_config_is_noop_other_config_refused(finished_run, tmp_path):
    cfg, run = copy_run(finished_run, tmp_path / "run")
    train(cfg, progress=False)  # complete already: nothing trained, nothing duplicated
    assert (run / "log.jsonl").read_bytes() == (finished_run[1] / "log.jsonl").read_bytes()
    with pytest.raises(RunMismatchError, match=r"lr.*--overwrite"):
        train(cfg.replace(lr=2e-3), progress=False)
    train(cfg.replace(lr=2e-3, steps=2), overwrite=True, progress=False)
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-0000002"
    assert len((run / "log.jsonl").read_text().splitlines()) == 1


def test_resume_falls_back_from_corrupt_checkpoint_bitwise(finished_run, tmp_path):
    cfg, run = copy_run(finished_run, tmp_path / "run")
    ref = finished_run[1]
    ck = run / "checkpoints"
    # Truncate the newest checkpoint's weights and drop the export: the rerun resumes from
    # step 4, says so, and ends bitwise where the uninterrupted run ended.
    f = unet_file(ck / "step-0000006" / "unet")
    f.write_bytes(f.read_bytes()[:100])
    shutil.rmtree(run / "model")
    with pytest.warns(UserWarning, match=r"step-0000006.*truncated"):
        assert find_resume_checkpoint(run) == ck / "step-0000004"
    with pytest.warns(UserWarning, match="Falling back"):
        train(cfg, progress=False)
    verify_checkpoint(ck / "step-0000006")
    for sub in ("model/unet", "checkpoints/step-0000006/unet", "checkpoints/step-0000006/unet_ema"):
        assert unet_file(run / sub).read_bytes() == unet_file(ref / sub).read_bytes(), sub
    assert (run / "log.jsonl").read_text().count("\n") == 3  # deduplicated
    # All checkpoints corrupt: a clear error naming the file and the fix.
    for p in ck.glob("step-*"):
        (p / "training_state.pt").write_bytes(b"junk")
    with (
        pytest.warns(UserWarning),
        pytest.raises(CheckpointError, match=r"training_state\.pt.*overwrite"),
    ):
        find_resume_checkpoint(run)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, caches, monkeypatch):
    real = TextToImage.loss
    calls = {"n": 0}

    def flaky(self, model, batch, generator):
        calls["n"] += 1
        out = real(self, model, batch, generator)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(TextToImage, "loss", flaky)
    cfg = make_cfg(caches, tmp_path / "run", steps=6)
    with pytest.raises(TrainingDivergedError, match="step 3"):
        train(cfg, progress=False)
    ck = Path(cfg.run_dir) / "checkpoints"
    assert (ck / "LATEST").read_text().strip() == "step-0000002"
    verify_checkpoint(ck / "step-0000002")
    assert not (Path(cfg.run_dir) / "model").exists()


def test_v_prediction_bf16_cosine(tmp_path, caches):
    cfg = make_cfg(
        caches,
        tmp_path / "run",
        steps=2,
        prediction_type="v_prediction",
        mixed_precision="bf16",
        lr_schedule="cosine",
        caption_dropout=0.0,
    )
    run = train(cfg, progress=False)
    info = json.loads((run / "model" / "ldmscale_model.json").read_text())
    assert info["prediction_type"] == "v_prediction"
    sched = json.loads((run / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    assert all(
        math.isfinite(json.loads(x)["loss"]) for x in (run / "log.jsonl").read_text().splitlines()
    )


def test_cli_train_with_overrides(tmp_path, caches):
    from ldmscale.cli import main

    cfg = make_cfg(caches, tmp_path / "ignored", steps=50)
    cfg.save(tmp_path / "train.toml")
    run = tmp_path / "cli_run"
    argv = [
        "train",
        "--config",
        str(tmp_path / "train.toml"),
        "--steps",
        "2",
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    assert main(argv) == 0
    saved = TrainConfig.load(run / "train_config.json")
    assert saved.steps == 2 and saved.run_dir == str(run)
    assert (run / "model" / "ldmscale_model.json").is_file()
    # A mismatching rerun is a one-line user error (exit 2), not a traceback.
    assert main([*argv[:-1], "--lr", "0.5", "--no-progress"]) == 2
    assert main(["train", "--run-dir", str(tmp_path / "x"), "--no-progress"]) == 2  # no data


def test_cli_config_with_init_from_teacher_and_objective_options(tmp_path, caches, capsys):
    from ldmscale.cli import build_parser, main
    from ldmscale.cli.train import config_from_args

    cfg = make_cfg(caches, tmp_path / "run", init_from="runs/c8/model", objective_options={
        "decay": 0.9, "schedule": {"kind": "cosine", "steps": [1, 2]}})  # fmt: skip
    cfg.save(tmp_path / "train.toml")
    assert "[objective_options.schedule]" in (tmp_path / "train.toml").read_text()
    assert TrainConfig.load(tmp_path / "train.toml") == cfg
    args = build_parser().parse_args(
        ["train", "--config", str(tmp_path / "train.toml"), "--teacher", "runs/c64/model"]
    )
    assert config_from_args(args) == cfg.replace(teacher="runs/c64/model")
    args = build_parser().parse_args(["train", "--init-from", "m", "--objective", "sr"])
    got = config_from_args(args)
    assert (got.init_from, got.objective, got.teacher) == ("m", "sr", None)
    # Errors are one line naming the key and the fix (exit 2): options t2i does not take ...
    assert main(["train", "--config", str(tmp_path / "train.toml"), "--no-progress"]) == 2
    assert "objective 't2i' takes no options" in capsys.readouterr().err
    # ... and a parent folder that does not exist.
    plain = make_cfg(caches, tmp_path / "run2", steps=1)
    plain.save(tmp_path / "plain.toml")
    rc = main(["train", "--config", str(tmp_path / "plain.toml"), "--init-from",
               str(tmp_path / "none"), "--no-progress"])  # fmt: skip
    assert rc == 2 and "init_from: model folder not found" in capsys.readouterr().err


def test_train_from_dataset_builds_caches(tmp_path, tiny_shapes):
    """data + vae + text_encoder instead of cache files: ldmscale.cache builds them."""

    torch.manual_seed(0)
    tiny_vae(block_out_channels=(8, 8), latent_channels=C).save_pretrained(tmp_path / "vae")
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"),
        c=8,
        layers_per_block=1,
        data=str(tiny_shapes),
        resolution=16,
        vae=str(tmp_path / "vae"),
        text_encoder={"kind": "minilm", "max_length": 8},
        steps=2,
        batch_size=4,
        warmup_steps=1,
    )
    run = train(cfg, progress=False)
    assert len(list((run / "cache").glob("*.safetensors"))) == 2
    info = json.loads((run / "model" / "ldmscale_model.json").read_text())
    assert info["unet_spec"]["context_dim"] == 384 and info["unet_spec"]["context_len"] == 8
    assert info["unet_spec"]["latent_size"] == 8
    assert info["text_encoder"]["kind"] == "minilm" and info["text_encoder"]["max_length"] == 8


# ----------------------------------------------------------------------------- kept checkpoints


def test_log_spaced_steps():
    for total, n, first in [(2000, 8, 50), (10, 10, 1), (100, 5, 1), (7, 3, 5), (6, 1, 1)]:
        out = log_spaced_steps(total, n, first)
        assert len(out) == n and list(out) == sorted(set(out)), out
        assert out[-1] == total and out[0] >= first and (n == 1 or out[0] == first)
    out = log_spaced_steps(10_000, 6, 10)
    ratios = [b / a for a, b in zip(out, out[1:])]
    assert max(ratios) / min(ratios) < 1.05  # geometric, not linear
    for bad in [(10, 12, 1), (10, 2, 11), (10, 0, 1), (0, 1, 1)]:
        with pytest.raises(ValueError, match="log_spaced_steps"):
            log_spaced_steps(*bad)


MODEL_KEYS = {"train_step", "total_steps", "train_compute", "images_seen", "seed", "run"}


def _info(folder: Path) -> dict:
    return json.loads((folder / "ldmscale_model.json").read_text())


def test_eval_exports_at_requested_steps_survive_keep_last(tmp_path, caches):
    cfg = make_cfg(caches, tmp_path / "myrun", steps=6, eval_steps=(5, 1, 3), keep_last=1, seed=7)
    run = train(cfg, progress=False)
    assert sorted(p.name for p in (run / "evals").iterdir()) == [
        "step-0000001",
        "step-0000003",
        "step-0000005",
    ]
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-0000006"]
    final = _info(run / "model")
    for step in (1, 3, 5):
        info = _info(eval_dir(run, step))
        assert MODEL_KEYS <= set(info)
        assert info["train_step"] == step and info["total_steps"] == 6
        assert info["images_seen"] == step * 4 and info["seed"] == 7 and info["run"] == "myrun"
        assert math.isclose(info["train_compute"], final["norm_cost"] * step)
        assert (eval_dir(run, step) / "vae" / "config.json").is_file()
        assert (eval_dir(run, step) / "scheduler" / "scheduler_config.json").is_file()
    assert final["train_step"] == 6 and final["images_seen"] == 24 and final["run"] == "myrun"
    w = [unet_file(eval_dir(run, s) / "unet").read_bytes() for s in (1, 3, 5)]
    assert len(set(w)) == 3  # three different EMA states
    with pytest.raises(ConfigError, match="eval_steps"):
        train(cfg.replace(run_dir=str(tmp_path / "bad"), eval_steps=(7,)), progress=False)


def test_eval_exports_resume_after_interruption_bitwise(tmp_path, caches):
    kw = dict(steps=8, eval_steps=(1, 3, 5, 8), checkpoint_every=2, keep_last=1)
    ref = train(make_cfg(caches, tmp_path / "ref", **kw), progress=False)
    cfg = make_cfg(caches, tmp_path / "run", **kw)

    def die(step: int) -> None:
        if step == 5:  # eval 5 exported, newest checkpoint is step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_step=die)
    run = Path(cfg.run_dir)
    assert (eval_dir(run, 5) / "ldmscale_model.json").is_file()
    assert not eval_dir(run, 8).exists()
    stamp = (eval_dir(run, 5) / "ldmscale_model.json").stat().st_mtime_ns
    train(cfg, progress=False)  # resumes from step 4, redoes step 5, skips its export
    assert (eval_dir(run, 5) / "ldmscale_model.json").stat().st_mtime_ns == stamp
    for sub in ["model/unet"] + [f"evals/step-{s:07d}/unet" for s in (1, 3, 5, 8)]:
        assert unet_file(run / sub).read_bytes() == unet_file(ref / sub).read_bytes(), sub
    # A deleted export is rebuilt from its step's checkpoint when one is kept, else a warning.
    shutil.rmtree(eval_dir(run, 8))
    shutil.rmtree(eval_dir(run, 3))
    with pytest.warns(UserWarning, match=r"step-0000003.*no checkpoint"):
        train(cfg, progress=False)
    assert (
        unet_file(eval_dir(run, 8) / "unet").read_bytes()
        == unet_file(eval_dir(ref, 8) / "unet").read_bytes()
    )
    assert _info(eval_dir(run, 8))["train_step"] == 8


# ----------------------------------------------------------------------------- objective hooks


@dataclass
class TargetOptions(Config):
    decay: float = 0.5
    weight: float = 10.0


@dataclass
class TargetEMA(TextToImage):
    """Test-only stateful objective: t2i plus a pull towards a target network that is an EMA
    of the model (updated in after_step, kept in every checkpoint), like a consistency
    distillation target."""

    decay: float = 0.5
    weight: float = 10.0
    name: str = "test_target_ema"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.target = copy.deepcopy(ctx.model).requires_grad_(False)
        self.updates = 0

    def loss(self, model, batch, generator):
        pull = sum(
            (p - q).square().mean() for p, q in zip(model.parameters(), self.target.parameters())
        )
        return super().loss(model, batch, generator) + self.weight * pull

    @torch.no_grad()
    def after_step(self, model) -> None:
        dst = list(self.target.parameters())
        torch._foreach_lerp_(dst, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])
        self.updates = int(state["updates"])


def build_target_ema(cfg: TrainConfig) -> TargetEMA:
    opts = read_options(TargetOptions, cfg)
    return TargetEMA(
        make_noise_scheduler(cfg.prediction_type),
        prediction_type=cfg.prediction_type,
        caption_dropout=cfg.caption_dropout,
        decay=opts.decay,
        weight=opts.weight,
    )


@pytest.fixture
def target_ema(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "test_target_ema", build_target_ema)
    return "test_target_ema"


def test_stateful_objective_resumes_bitwise(tmp_path, caches, target_ema, monkeypatch):
    kw = dict(steps=6, objective=target_ema, objective_options={"decay": 0.7})
    ref = train(make_cfg(caches, tmp_path / "ref", **kw), progress=False)
    state = torch.load(ref / "checkpoints/step-0000006/training_state.pt", weights_only=True)
    assert state["objective"]["updates"] == 6 and "conv_in.weight" in state["objective"]["target"]
    assert json.loads((ref / "train_config.json").read_text())["objective_options"] == {
        "decay": 0.7
    }

    def die(step: int) -> None:
        if step == 3:  # newest checkpoint: step 2; the target has moved since the init
            raise KeyboardInterrupt

    for name, restore in (("run", True), ("no_restore", False)):
        cfg = make_cfg(caches, tmp_path / name, **kw)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, progress=False, on_step=die)
        if not restore:  # control: a resume that loses the objective's state ...
            monkeypatch.setattr(TargetEMA, "load_state_dict", lambda self, state: None)
        train(cfg, progress=False)
        same = [
            unet_file(Path(cfg.run_dir) / sub).read_bytes() == unet_file(ref / sub).read_bytes()
            for sub in ("model/unet", "checkpoints/step-0000006/unet")
        ]
        assert same == [restore, restore], name  # ... does not end where the uninterrupted run did
    a = torch.load(tmp_path / "run/checkpoints/step-0000006/training_state.pt", weights_only=True)
    for k, v in state["objective"]["target"].items():
        assert torch.equal(a["objective"]["target"][k], v), k
    # Objective options are part of the run's identity; unknown ones fail before any work.
    with pytest.raises(RunMismatchError, match="objective_options"):
        train(make_cfg(caches, tmp_path / "run", **{**kw, "objective_options": {}}), progress=False)
    bad = make_cfg(caches, tmp_path / "bad", **{**kw, "objective_options": {"decai": 0.7}})
    with pytest.raises(ConfigError, match=r"unknown key.*decai"):
        train(bad, progress=False)
    assert not (tmp_path / "bad").exists()


class Grown(TextToImage):
    """Test-only: t2i on a UNet with every override (zero extra inputs, class 0, zero
    guidance embedding), recording the weights it starts from, exporting a DDIM hint."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(make_noise_scheduler(cfg.prediction_type), caption_dropout=0.0)
        self.name = "test_grown"

    def unet_overrides(self) -> dict[str, int]:
        return {"extra_in_channels": 2, "num_class_embeds": 3, "time_cond_proj_dim": 8}

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.initial = {k: v.clone() for k, v in ctx.model.state_dict().items()}

    def loss(self, model, batch, generator):
        def unet(x, t, **kw):
            b = x.shape[0]
            x = torch.cat([x, torch.zeros(b, 2, *x.shape[2:])], dim=1)
            zeros = torch.zeros(b, dtype=torch.long)
            return model(x, t, class_labels=zeros, timestep_cond=torch.zeros(b, 8), **kw)

        return super().loss(unet, batch, generator)

    def export_hints(self) -> ExportHints:
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(make_noise_scheduler().config)
        return ExportHints(sched, sampler_hint={"name": "ddim", "steps": 4})


def test_init_from_grows_the_parent_and_exports_the_objectives_hints(
    finished_run, tmp_path, caches, monkeypatch
):
    made = []
    monkeypatch.setitem(OBJECTIVES, "test_grown", lambda cfg: made.append(Grown(cfg)) or made[-1])
    parent = finished_run[1] / "model"
    cfg = make_cfg(
        caches, tmp_path / "child", steps=1, objective="test_grown", init_from=str(parent)
    )
    run = train(cfg, progress=False)
    start = made[0].initial
    want = load_file(str(unet_file(parent / "unet")))
    assert torch.equal(start["conv_in.weight"][:, :C], want["conv_in.weight"])
    assert not start["conv_in.weight"][:, C:].any() and not start["class_embedding.weight"].any()
    assert not start["time_embedding.cond_proj.weight"].any()
    assert all(torch.equal(start[k], v) for k, v in want.items() if k != "conv_in.weight")
    info = json.loads((run / "model" / "ldmscale_model.json").read_text())
    assert (
        info["unet_spec"]["extra_in_channels"] == 2 and info["unet_spec"]["num_class_embeds"] == 3
    )
    assert info["sampler_hint"] == {"name": "ddim", "steps": 4}
    from ldmscale.modelfolder import model_hash

    assert info["parent"] == {"path": str(parent.resolve()), "hash": model_hash(parent)}
    assert info["task"] == "t2i"
    assert info["train_config"]["init_from"] == str(parent)
    sched = json.loads((run / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler"
    unet_cfg = json.loads((run / "model" / "unet" / "config.json").read_text())
    assert (unet_cfg["in_channels"], unet_cfg["out_channels"]) == (C + 2, C)
    assert unet_cfg["time_cond_proj_dim"] == 8
    # A resume needs no parent any more (the checkpoint holds the weights); a fresh run does.
    with pytest.raises(SurgeryError, match=r"init_from: model folder not found"):
        train(
            cfg.replace(run_dir=str(tmp_path / "x"), init_from=str(tmp_path / "no")), progress=False
        )


def test_teacher_is_loaded_frozen_for_the_objective(finished_run, tmp_path, caches, monkeypatch):
    class Distil(TextToImage):
        uses_teacher = True

        def setup(self, ctx) -> None:
            super().setup(ctx)
            self.teacher = load_teacher(ctx.cfg.teacher, ctx.device)

        def loss(self, model, batch, generator):
            x = torch.randn(batch["latent_mean"].shape, generator=generator)
            t = torch.randint(0, 1000, (x.shape[0],), generator=generator)
            ctx = batch["embeddings"]
            with torch.no_grad():
                want = self.teacher(x, t, encoder_hidden_states=ctx).sample
            return (model(x, t, encoder_hidden_states=ctx).sample - want).square().mean()

    made = []
    monkeypatch.setitem(
        OBJECTIVES, "distil", lambda cfg: made.append(Distil(make_noise_scheduler())) or made[-1]
    )
    teacher = finished_run[1] / "model"
    cfg = make_cfg(caches, tmp_path / "run", steps=2, objective="distil", teacher=str(teacher))
    train(cfg, progress=False)
    t = made[0].teacher
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    want = load_file(str(unet_file(teacher / "unet")))
    assert all(torch.equal(v, want[k]) for k, v in t.state_dict().items())
    with pytest.raises(SurgeryError, match=r"TrainConfig.teacher: model folder not found"):
        train(
            cfg.replace(run_dir=str(tmp_path / "y"), teacher=str(tmp_path / "no")), progress=False
        )
    with pytest.raises(ConfigError, match="uses no teacher"):
        train(make_cfg(caches, tmp_path / "z", teacher=str(teacher)), progress=False)


def test_checkpoint_of_the_old_format_resumes_bitwise(finished_run, tmp_path):
    """A checkpoint written before the objective state (with the unused epoch/rng keys)."""
    from ldmscale.io import sha256_file

    cfg, run = copy_run(finished_run, tmp_path / "run")
    ck = run / "checkpoints" / "step-0000004"
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    shutil.rmtree(run / "model")
    state = torch.load(ck / "training_state.pt", weights_only=True)
    del state["objective"]
    state.update(epoch=0, rng={"torch": torch.get_rng_state(), "python": [3, [1, 2], None]})
    torch.save(state, ck / "training_state.pt")
    meta = json.loads((ck / "meta.json").read_text())
    f = ck / "training_state.pt"
    meta["files"]["training_state.pt"] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    meta["replicas_in_sync"] = True
    (ck / "meta.json").write_text(json.dumps(meta))
    (run / "checkpoints" / "LATEST").write_text("step-0000004\n")
    train(cfg, progress=False)
    for sub in ("model/unet", "checkpoints/step-0000006/unet", "checkpoints/step-0000006/unet_ema"):
        assert unet_file(run / sub).read_bytes() == unet_file(finished_run[1] / sub).read_bytes()


# ----------------------------------------------------------------------------- slow


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, caches):
    """kill -9 mid-run, rerun the same command: weights and log equal an uninterrupted run."""
    steps = 16
    kw = dict(steps=steps, checkpoint_every=3, log_every=2)
    ref_cfg = make_cfg(caches, tmp_path / "ref", **kw)
    cfg = make_cfg(caches, tmp_path / "run", **kw)
    cfg.save(tmp_path / "train.json")
    cmd = [
        sys.executable,
        "-m",
        "ldmscale",
        "train",
        "--config",
        str(tmp_path / "train.json"),
        "--no-progress",
    ]

    t0 = time.time()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = Path(cfg.run_dir) / "checkpoints" / "LATEST"
    while not latest.exists() and proc.poll() is None and time.time() - t0 < 240:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = int(latest.read_text().strip()[5:])
    assert 3 <= killed_at < steps and not (Path(cfg.run_dir) / "model").exists()

    restart = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-2000:]
    assert "resuming" in restart.stderr
    train(ref_cfg, progress=False)  # uninterrupted reference, single-threaded like the subprocesses

    run, ref = Path(cfg.run_dir), Path(ref_cfg.run_dir)
    last = f"checkpoints/step-{steps:07d}"
    for sub in ("model/unet", f"{last}/unet", f"{last}/unet_ema"):
        assert unet_file(run / sub).read_bytes() == unet_file(ref / sub).read_bytes(), sub
    a = torch.load(run / last / "training_state.pt", weights_only=True)
    b = torch.load(ref / last / "training_state.pt", weights_only=True)
    for k, v in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][k]["exp_avg_sq"], v["exp_avg_sq"])

    def log(p):
        return [
            {k: v for k, v in json.loads(x).items() if k != "wall_time"}
            for x in (p / "log.jsonl").read_text().splitlines()
        ]

    assert log(run) == log(ref) and [r["step"] for r in log(run)] == list(range(2, steps + 1, 2))
    print(f"killed after step-{killed_at}; kill+resume+reference took {time.time() - t0:.1f} s")


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate_launch(tmp_path, caches):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine: gloo DDP."""
    cfg = make_cfg(caches, tmp_path / "run", steps=4, batch_size=8)
    cfg.save(tmp_path / "train.toml")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(29500 + os.getpid() % 1000),
        "-m", "ldmscale", "train", "--config", str(tmp_path / "train.toml"), "--no-progress",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    run = Path(cfg.run_dir)
    meta = json.loads((run / "checkpoints" / "step-0000004" / "meta.json").read_text())
    assert meta["num_processes"] == 2
    assert (run / "model" / "ldmscale_model.json").is_file()
    assert out.stdout.count("model") == 1  # one process prints the result
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in lines] == [16, 32]  # global batch 8 = 2 x 4
