"""Tests for ldmscale.modelfolder: the typed ldmscale_model.json and the diffusers pipeline files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import make_tiny_ldmscale_model, tiny_vae
from ldmscale.family import UNetSpec, build_unet
from ldmscale.model import load_model
from ldmscale.modelfolder import (
    MODEL_FILE,
    MODEL_FORMAT,
    PIPELINE_INDEX,
    ModelLoadError,
    ModelMeta,
    ParentModel,
    find_model_folder,
    model_hash,
    model_name,
    parent_of,
    read_model_meta,
    write_model_folder,
    write_model_meta,
    write_pipeline_files,
)
from ldmscale.objectives import make_noise_scheduler
from ldmscale.samplers import make_scheduler
from ldmscale.sampling import SamplerConfig, generate
from ldmscale.text import MINILM_SHA256, TextEncoderSpec

PROMPTS = ["a red circle", "a blue square top left", "a green triangle"]
SEEDS = [11, 22, 33]
MINILM_LEN = 16

#: The keys train.export_model wrote before the schema existed, plus task, parent and name.
EXPORT_KEYS = {
    "format", "unet_spec", "text_encoder", "prediction_type", "scaling_factor", "norm_cost",
    "gflops_xla", "gflops_dense", "train_steps", "train_step", "total_steps", "train_compute",
    "images_seen", "seed", "run", "train_config", "code_version",
}  # fmt: skip


def minilm_meta(**changes) -> ModelMeta:
    """A text-to-image model's meta: c=8 UNet on 8x8x4 latents, MiniLM context (16 x 384)."""
    meta = ModelMeta(
        unet_spec=UNetSpec(c=8, context_dim=384, context_len=MINILM_LEN, latent_size=8),
        text_encoder=TextEncoderSpec(kind="minilm", max_length=MINILM_LEN),
        scaling_factor=0.5,
        norm_cost=0.002,
        gflops_xla=0.01,
        gflops_dense=0.011,
        train_steps=10,
        train_step=10,
        total_steps=10,
        train_compute=0.02,
        images_seen=80,
        seed=0,
        run="run",
        train_config={"c": 8},
        code_version="test",
    )
    return meta.replace(**changes)


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory):
    """A model folder written as the trainer's export writes it, with a MiniLM text encoder."""
    meta = minilm_meta()
    vae_dir = tmp_path_factory.mktemp("vae") / "vae"
    tiny_vae(scaling_factor=0.5).save_pretrained(vae_dir)
    torch.manual_seed(0)
    unet = build_unet(meta.unet_spec)
    out = tmp_path_factory.mktemp("minilm") / "run" / "model"
    return write_model_folder(out, unet, vae_dir, make_noise_scheduler(), meta)


# --- the schema ---------------------------------------------------------------------------


def test_meta_round_trip_and_keys(tmp_path):
    meta = minilm_meta(parent=ParentModel(path="/runs/base/model", hash="ab" * 16), task="sr")
    write_model_meta(tmp_path, meta)
    data = json.loads((tmp_path / MODEL_FILE).read_text())
    assert set(data) == EXPORT_KEYS | {"task", "parent", "name", "sampler_hint"}
    assert data["format"] == MODEL_FORMAT and data["task"] == "sr"
    assert data["parent"] == {"path": "/runs/base/model", "hash": "ab" * 16}
    assert data["text_encoder"] == {"kind": "minilm", "path": None, "max_length": MINILM_LEN}
    assert read_model_meta(tmp_path) == meta
    assert "train_config" not in meta.describe() and meta.describe()["run"] == "run"


def test_folder_written_before_the_schema_loads(tmp_path, tiny_sd_dir):
    folder = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir, with_flops=False)
    raw = json.loads((folder / MODEL_FILE).read_text())
    assert "task" not in raw and "parent" not in raw
    meta = read_model_meta(folder)
    assert meta.task == "t2i" and meta.parent is None and meta.train_step is None
    assert meta.unet_spec.to_dict() == raw["unet_spec"]
    assert meta.text_encoder.to_dict() == raw["text_encoder"]
    assert (meta.scaling_factor, meta.norm_cost, meta.gflops_dense) == (0.5, 0.001, None)
    described = meta.describe()
    assert all(described[k] == v for k, v in raw.items() if k != "train_config")
    assert model_name(folder, meta) == "run"


@pytest.mark.parametrize(
    "change,match",
    [
        ({"format": "other/9"}, "format 'other/9' is not 'ldmscale-model/1'.*re-export"),
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\].*Remove"),
        ({"norm_cost": "cheap"}, "key 'norm_cost' must be a number, got 'cheap'"),
        ({"train_step": 2.5}, "key 'train_step' must be an integer"),
        ({"train_config": [1]}, "key 'train_config' must be an object"),
        ({"scaling_factor": None}, r"missing key\(s\) \['scaling_factor'\]"),
        ({"unet_spec": {"c": 8, "depth": 3}}, "key 'unet_spec' is not a valid UNetSpec.*depth"),
        ({"text_encoder": {"kind": "t5"}}, "key 'text_encoder' is not a valid TextEncoderSpec"),
        ({"parent": {"path": "/x"}}, "key 'parent' is not a valid ParentModel"),
        ({"task": "painting"}, "task must be one of"),
    ],
)
def test_read_errors_name_the_key(tmp_path, change, match):
    data = {**minilm_meta().to_dict(), **change}
    (tmp_path / MODEL_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=match):
        read_model_meta(tmp_path)


def test_read_errors_missing_and_damaged(tmp_path):
    with pytest.raises(ModelLoadError, match="not found.*not an ldmscale model folder"):
        read_model_meta(tmp_path)
    (tmp_path / MODEL_FILE).write_text('{"format": ')
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        read_model_meta(tmp_path)


# --- identity -----------------------------------------------------------------------------


def test_find_name_hash_parent(tmp_path, tiny_sd_dir):
    folder = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir, "c8", 8, 0.025)
    assert find_model_folder(folder.parent) == (folder, "ldmscale")
    assert find_model_folder(tiny_sd_dir) == (tiny_sd_dir, "diffusers")
    with pytest.raises(ModelLoadError, match="not a model folder"):
        find_model_folder(tmp_path)
    evals = folder.parent / "evals" / "step-0000005"
    shutil.copytree(folder, evals)
    meta = read_model_meta(evals).replace(run="c8")
    assert model_name(evals, meta) == "c8/step-0000005"
    assert model_name(evals, meta.replace(name="mine")) == "mine"
    before = model_hash(folder)
    (folder / "unet" / "config.json").write_text(
        (folder / "unet" / "config.json").read_text() + " "
    )
    assert model_hash(folder) != before  # configs and weights are covered
    parent = parent_of(folder.parent)
    assert parent == ParentModel(str(folder.resolve()), model_hash(folder))


def test_model_hash_is_the_sweep_identity(tmp_path, tiny_sd_dir):
    from ldmscale.sweep import describe_model

    folder = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir)
    assert describe_model(folder).hash == model_hash(folder)
    write_pipeline_files(folder)  # the text encoder, tokenizer and index are not hashed
    assert describe_model(folder).hash == model_hash(folder)


# --- the diffusers pipeline ---------------------------------------------------------------


def _pipeline(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_latents(pipe, cfg: SamplerConfig, prompts=PROMPTS, seeds=SEEDS):
    pipe.scheduler = make_scheduler(pipe.scheduler.config, cfg.name, cfg.timestep_spacing)
    return pipe(
        prompts,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
    ).images


def test_minilm_folder_is_a_pipeline_folder(minilm_folder):
    from ldmscale.io import sha256_file

    index = json.loads((minilm_folder / PIPELINE_INDEX).read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["tokenizer"] == ["transformers", "BertTokenizerFast"]
    assert index["safety_checker"] == index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert sha256_file(minilm_folder / "text_encoder" / "model.safetensors") == MINILM_SHA256
    te = json.loads((minilm_folder / "text_encoder" / "config.json").read_text())
    assert te["use_attention_mask"] is True
    tok = json.loads((minilm_folder / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == MINILM_LEN
    assert read_model_meta(minilm_folder) == minilm_meta()


@pytest.fixture(scope="module")
def minilm_pipe(minilm_folder):
    return _pipeline(minilm_folder)


@pytest.fixture(scope="module")
def minilm_model(minilm_folder):
    return load_model(minilm_folder)


@pytest.mark.parametrize("name", ["ddim", "dpmpp"])
def test_minilm_pipeline_equals_ldmscale(minilm_folder, minilm_pipe, minilm_model, name):
    """StableDiffusionPipeline.from_pretrained(model folder) gives ldmscale's latents."""
    pipe = minilm_pipe
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert pipe.vae.config.scaling_factor == read_model_meta(minilm_folder).scaling_factor
    cfg = SamplerConfig(name=name, steps=3, guidance=3.0, timestep_spacing="trailing")
    ours = generate(minilm_model, PROMPTS, SEEDS, cfg, batch_size=3, progress=False)
    theirs = _pipeline_latents(pipe, cfg)
    assert ours.latents.shape == theirs.shape == (3, 4, 8, 8)
    # bitwise equal on this CPU (same batch, same kernels); a small margin for other machines
    torch.testing.assert_close(ours.latents, theirs, rtol=1e-5, atol=1e-6)
    # the context really matters: another prompt gives other latents
    other = _pipeline_latents(pipe, cfg, ["a yellow star"] * 3)
    assert not torch.allclose(other, theirs, atol=1e-3)


def test_clip_folder_becomes_a_pipeline_folder(tmp_path, tiny_sd_dir):
    """A folder written before pipeline files existed (CLIP text encoder) gains them, loads
    in diffusers with ldmscale's latents, and still loads in ldmscale with the same hash."""
    folder = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir)
    before = model_hash(folder)
    write_pipeline_files(folder)
    assert model_hash(folder) == before
    index = json.loads((folder / PIPELINE_INDEX).read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    pipe = _pipeline(folder)
    assert pipe.text_encoder.config.use_attention_mask is False
    cfg = SamplerConfig(name="ddim", steps=2, guidance=3.0, timestep_spacing="trailing")
    model = load_model(folder)
    assert model.source_format == MODEL_FORMAT  # ldmscale_model.json wins over model_index.json
    ours = generate(model, PROMPTS, SEEDS, cfg, progress=False)
    torch.testing.assert_close(ours.latents, _pipeline_latents(pipe, cfg), rtol=1e-4, atol=1e-5)


def test_vae_scaling_factor_follows_the_meta(tmp_path, tiny_sd_dir):
    folder = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir)
    meta = read_model_meta(folder).replace(scaling_factor=0.25)
    write_model_meta(folder, meta)
    write_pipeline_files(folder)
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == 0.25
    assert load_model(folder).scaling_factor == 0.25


def test_export_without_the_text_encoder_warns_and_keeps_the_model(tmp_path, tiny_sd_dir):
    source = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir)
    meta = read_model_meta(source)
    meta = meta.replace(text_encoder=TextEncoderSpec("clip", str(tmp_path / "gone"), 8))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(source / "unet")
    with pytest.warns(UserWarning, match="pipeline files not written.*not found"):
        out = write_model_folder(
            tmp_path / "out", unet, source / "vae", make_noise_scheduler(), meta
        )
    assert read_model_meta(out) == meta and not (out / PIPELINE_INDEX).exists()
    assert not list(tmp_path.glob(".out*"))  # no temporary left behind
