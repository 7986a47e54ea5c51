"""Denoisers (the UNet-evaluation seam of the sampling loop) and the cost rules they state."""

from __future__ import annotations

import pytest
import torch

from ldmscale import cost
from ldmscale.denoisers import (
    CFGDenoiser,
    UNetDenoiser,
    guidance_embedding_denoiser,
    guidance_scale_embedding,
)

B, CTX_LEN, CTX_DIM = 2, 3, 16


def _unet(**overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    cfg = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CTX_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    cfg.update(overrides)
    return UNet2DConditionModel(**cfg).eval().requires_grad_(False)


def _inputs(channels: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, channels, 8, 8, generator=g)
    ctx = torch.randn(B, CTX_LEN, CTX_DIM, generator=g)
    null = torch.randn(1, CTX_LEN, CTX_DIM, generator=g)
    return x, torch.tensor(500), ctx, null


def _batches(unet):
    sizes: list[tuple[int, ...]] = []
    handle = unet.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape)))
    return sizes, handle


def test_cfg_is_one_doubled_forward_of_the_guidance_formula():
    unet = _unet()
    x, t, ctx, null = _inputs()
    with torch.no_grad():
        u = unet(x, t, encoder_hidden_states=null.expand(B, -1, -1)).sample
        c = unet(x, t, encoder_hidden_states=ctx).sample
        den = CFGDenoiser(unet, ctx, null, 3.0)
        sizes, handle = _batches(unet)
        out = den(x, t)
        handle.remove()
    assert den.evaluations_per_step == 2
    assert sizes == [(2 * B, 4, 8, 8)]
    torch.testing.assert_close(out, u + 3.0 * (c - u), rtol=1e-5, atol=1e-5)


def test_cfg_at_w1_is_the_conditional_model_in_one_plain_forward():
    unet = _unet()
    x, t, ctx, _ = _inputs()
    with torch.no_grad():
        den = CFGDenoiser(unet, ctx, None, 1.0)
        sizes, handle = _batches(unet)
        out = den(x, t)
        handle.remove()
        ref = unet(x, t, encoder_hidden_states=ctx).sample
    assert den.evaluations_per_step == 1 and sizes == [(B, 4, 8, 8)]
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="unconditional"):
        CFGDenoiser(unet, ctx, None, 2.0)


def test_concat_and_class_labels_reach_the_unet_and_are_doubled_under_cfg():
    # a super-resolution-style UNet: 3 image channels appended to 4 latent channels,
    # a noise level as class label
    unet = _unet(in_channels=7, out_channels=4, num_class_embeds=1000)
    x, t, ctx, null = _inputs()
    image = torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    level = torch.tensor([20, 20])
    with torch.no_grad():
        out = UNetDenoiser(unet, ctx, concat=image, class_labels=level)(x, t)
        other_image = UNetDenoiser(unet, ctx, concat=-image, class_labels=level)(x, t)
        other_level = UNetDenoiser(unet, ctx, concat=image, class_labels=level + 300)(x, t)
        sizes, handle = _batches(unet)
        guided = CFGDenoiser(unet, ctx, null, 2.0, concat=image, class_labels=level)(x, t)
        handle.remove()
    assert out.shape == (B, 4, 8, 8)
    assert not torch.allclose(out, other_image) and not torch.allclose(out, other_level)
    assert sizes == [(2 * B, 7, 8, 8)] and guided.shape == (B, 4, 8, 8)


def test_guidance_embedding_is_one_forward_that_depends_on_w():
    unet = _unet(time_cond_proj_dim=8)
    x, t, ctx, _ = _inputs()
    with torch.no_grad():
        den = guidance_embedding_denoiser(unet, ctx, 4.0)
        sizes, handle = _batches(unet)
        a = den(x, t)
        handle.remove()
        b = guidance_embedding_denoiser(unet, ctx, 1.0)(x, t)
    assert den.evaluations_per_step == 1 and sizes == [(B, 4, 8, 8)]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        guidance_embedding_denoiser(_unet(), ctx, 4.0)


def test_guidance_scale_embedding_convention():
    emb = guidance_scale_embedding(torch.tensor([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    # w = 0: sin half 0, cos half 1; the first frequency is 1 (the argument is 1000 w)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb[1, 0].item() == pytest.approx(torch.sin(torch.tensor(500.0)).item(), abs=1e-6)
    assert guidance_scale_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_cost_rules():
    assert cost.cfg_evaluations(1.0) == 1 and cost.cfg_evaluations(7.5) == 2
    assert cost.cfg_evaluations(0.0) == 2  # w = 0 is the unconditional model, still doubled
    assert cost.nfe(16) == 16
    assert cost.unet_evaluations(16, 2, n_images=10) == 320
    assert cost.sampling_cost(0.25, 8) == 2.0
    assert cost.sampling_flops(0.5, 4, 2, n_images=3) == pytest.approx(0.5e9 * 4 * 2 * 3)
