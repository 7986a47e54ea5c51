"""UNetSpec overrides and function-preserving growth of a trained UNet (ldmscale.surgery)."""

from __future__ import annotations

import pytest
import torch

from conftest import surgery_base_spec
from ldmscale.config import ConfigError
from ldmscale.family import UNetSpec, count_gflops, unet_inputs
from ldmscale.surgery import SurgeryError, grow_unet, init_from, load_unet

BASE = surgery_base_spec()


@pytest.fixture(scope="module")
def parent(random_parent_unet) -> torch.nn.Module:
    return random_parent_unet


def inputs(spec: UNetSpec, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, spec.latent_channels, 8, 8, generator=g)
    t = torch.tensor([3, 500, 990])
    ctx = torch.randn(3, spec.context_len, spec.context_dim, generator=g)
    extra = torch.randn(3, spec.extra_in_channels, 8, 8, generator=g)
    kw = {}
    if spec.num_class_embeds:
        kw["class_labels"] = torch.randint(0, spec.num_class_embeds, (3,), generator=g)
    if spec.time_cond_proj_dim:
        kw["timestep_cond"] = torch.randn(3, spec.time_cond_proj_dim, generator=g) * 5
    return x, t, ctx, torch.cat([x, extra], dim=1), kw


def test_overrides_are_off_and_absent_by_default():
    assert set(BASE.to_dict()) == {
        "c", "context_dim", "context_len", "latent_channels", "latent_size", "layers_per_block",
        "heads", "head_dim",
    }  # fmt: skip
    assert "num_class_embeds" not in BASE.unet_config()
    spec = BASE.replace(extra_in_channels=3, num_class_embeds=10, time_cond_proj_dim=16)
    assert UNetSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["extra_in_channels"] == 3
    cfg = spec.unet_config()
    assert (cfg["in_channels"], cfg["out_channels"]) == (7, 4)
    assert (cfg["num_class_embeds"], cfg["time_cond_proj_dim"]) == (10, 16)
    args, kwargs = unet_inputs(spec, "cpu", batch=2)
    assert args[0].shape == (2, 7, 8, 8) and set(kwargs) == {
        "encoder_hidden_states", "class_labels", "timestep_cond"
    }  # fmt: skip
    assert count_gflops(spec) > count_gflops(BASE)  # the extra inputs and projections count
    with pytest.raises(ConfigError, match="extra_in_channels"):
        BASE.replace(extra_in_channels=-1)


OVERRIDES = [
    {"extra_in_channels": 3},
    {"num_class_embeds": 10},
    {"time_cond_proj_dim": 16},
    {"extra_in_channels": 4, "num_class_embeds": 1000, "time_cond_proj_dim": 32},
]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: "+".join(o))
def test_grown_child_computes_what_the_parent_computes(parent, overrides):
    spec = BASE.replace(**overrides)
    child = grow_unet(parent, spec).eval()
    x, t, ctx, x_cat, kw = inputs(spec)
    with torch.no_grad():
        want = parent(x, t, encoder_hidden_states=ctx).sample
        got = child(x_cat, t, encoder_hidden_states=ctx, **kw).sample
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # The new layers are live: a non-zero value in any of them changes the output.
    with torch.no_grad():
        modules = dict(child.named_modules())
        for name in ("class_embedding", "time_embedding.cond_proj"):
            if modules.get(name) is not None:
                modules[name].weight.fill_(0.1)
        if spec.extra_in_channels:
            child.conv_in.weight[:, 4:].fill_(0.1)
        moved = child(x_cat, t, encoder_hidden_states=ctx, **kw).sample
    assert (moved - want).abs().max() > 1e-3


def test_init_from_a_model_folder(parent, tmp_path):
    parent.save_pretrained(tmp_path / "model" / "unet")
    spec = BASE.replace(num_class_embeds=5)
    torch.manual_seed(0)
    a = init_from(tmp_path / "model", spec)
    b = init_from(tmp_path, spec)  # a run folder (model/ inside) works too
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert torch.equal(a.class_embedding.weight, torch.zeros(5, a.class_embedding.weight.shape[1]))
    assert torch.equal(a.conv_in.weight, parent.conv_in.weight)
    assert load_unet(tmp_path / "model").config.in_channels == 4


def test_init_from_errors_name_the_problem(parent, tmp_path):
    with pytest.raises(SurgeryError, match=r"model folder not found.*ldmscale train"):
        init_from(tmp_path / "nope", BASE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SurgeryError, match=r"not a trained model folder.*unet/config.json"):
        init_from(tmp_path / "empty", BASE)
    with pytest.raises(SurgeryError, match=r"c \(block widths\): parent \[8, 16, 32, 32\]"):
        grow_unet(parent, BASE.replace(c=16))
    with pytest.raises(SurgeryError, match=r"context_dim: parent 16, child 32"):
        grow_unet(parent, BASE.replace(context_dim=32))
    grown = grow_unet(parent, BASE.replace(extra_in_channels=3, num_class_embeds=10))
    with pytest.raises(SurgeryError, match=r"extra_in_channels: parent 3, child 0"):
        grow_unet(grown, BASE.replace(num_class_embeds=10))
    with pytest.raises(SurgeryError, match=r"num_class_embeds: parent 10, child 0"):
        grow_unet(grown, BASE.replace(extra_in_channels=3))
    # Latent size and context length change no weight: allowed.
    assert grow_unet(parent, BASE.replace(latent_size=16, context_len=9)).config.sample_size == 16
