"""The Real-ESRGAN degradation (ldmscale.data.degrade) and its kernels (ldmscale.data.kernels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

from ldmscale.config import Config
from ldmscale.data import DataError
from ldmscale.data.degrade import (
    PRESETS,
    DegradeConfig,
    degrade,
    filter2d,
    gaussian_noise,
    jpeg,
    poisson_noise,
    upsample_bicubic,
)
from ldmscale.data.kernels import (
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    random_kernel,
    sinc_kernel,
)
from ldmscale.data.shapes import make_example


def _shapes(n: int, resolution: int = 32) -> torch.Tensor:
    """uint8 [n, H, W, 3] validation images of the shapes dataset."""
    imgs = [np.asarray(make_example(0, "validation", i, resolution)[0]) for i in range(n)]
    return torch.from_numpy(np.stack(imgs))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- kernels


@pytest.mark.parametrize(
    "kernel",
    [
        gaussian_kernel(7, 1.3),
        gaussian_kernel(21, 3.0, 0.7, 0.4),
        generalized_gaussian_kernel(9, 1.1, 2.0, -1.0, 0.6),
        generalized_gaussian_kernel(9, 1.1, 2.0, -1.0, 3.5),
        plateau_kernel(11, 1.5, 0.4, 2.0, 1.7),
        sinc_kernel(13, math.pi / 4),
        sinc_kernel(3, math.pi),
    ],
)
def test_kernels_sum_to_one(kernel):
    assert kernel.dtype == torch.float64
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_gaussian_matches_formula_and_rotation():
    k = gaussian_kernel(9, 2.0, 0.5, math.pi / 2)
    x = torch.arange(9, dtype=torch.float64) - 4
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    # Rotated by 90°, the long axis (σ = 2) lies along y.
    expected = torch.exp(-0.5 * ((xx / 0.5) ** 2 + (yy / 2.0) ** 2))
    torch.testing.assert_close(k, expected / expected.sum(), rtol=0, atol=1e-12)
    iso = gaussian_kernel(7, 1.2)
    torch.testing.assert_close(iso, iso.T, rtol=0, atol=0)
    torch.testing.assert_close(iso, iso.flip(0), rtol=0, atol=0)


def test_generalized_with_beta_one_is_the_gaussian():
    g = gaussian_kernel(11, 1.7, 0.9, 0.3)
    torch.testing.assert_close(
        generalized_gaussian_kernel(11, 1.7, 0.9, 0.3, 1.0), g, rtol=0, atol=1e-15
    )
    assert not torch.allclose(generalized_gaussian_kernel(11, 1.7, 0.9, 0.3, 2.0), g)


def test_plateau_matches_formula():
    k = plateau_kernel(7, 1.5, None, 0.0, 2.0)
    x = torch.arange(7, dtype=torch.float64) - 3
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    q = (xx**2 + yy**2) / 1.5**2
    expected = 1 / (1 + q**2)
    torch.testing.assert_close(k, expected / expected.sum(), rtol=0, atol=1e-15)


@pytest.mark.parametrize(("size", "omega"), [(7, math.pi / 3), (13, 2.0), (21, math.pi / 5)])
def test_sinc_matches_scipy_j1(size, omega):
    r = np.arange(size) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    rad = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * scipy.special.j1(omega * rad) / (2 * np.pi * rad)
    k[size // 2, size // 2] = omega**2 / (4 * np.pi)
    np.testing.assert_allclose(sinc_kernel(size, omega).numpy(), k / k.sum(), rtol=0, atol=1e-10)


def test_bad_kernel_arguments_are_refused():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)
    with pytest.raises(ValueError, match="positive"):
        gaussian_kernel(5, 0.0)
    with pytest.raises(ValueError, match="cut-off"):
        sinc_kernel(5, 4.0)


def test_random_kernel_is_seeded_and_varied():
    args = (7, (0.45, 0.25, 0.12, 0.03, 0.12, 0.03), (0.2, 3.0), (0.5, 4.0), (1.0, 2.0))
    a = random_kernel(_gen(1), *args)
    torch.testing.assert_close(random_kernel(_gen(1), *args), a, rtol=0, atol=0)
    assert not torch.equal(random_kernel(_gen(2), *args), a)
    only_plateau = (7, (0, 0, 0, 0, 1, 0), (1.0, 1.0001), (0.5, 4.0), (1.0, 2.0))
    # An isotropic plateau kernel is symmetric under transposition.
    p = random_kernel(_gen(3), *only_plateau)
    torch.testing.assert_close(p, p.T, rtol=0, atol=0)


def test_filter2d_with_pulse_is_identity_and_wide_kernels_fall_back():
    img = torch.rand(3, 5, 6, generator=_gen(0))
    pulse = torch.zeros(3, 3, dtype=torch.float64)
    pulse[1, 1] = 1
    torch.testing.assert_close(filter2d(img, pulse), img)
    # A 21-tap kernel on a 5 px image cannot reflect-pad; it replicates instead.
    out = filter2d(img, gaussian_kernel(21, 3.0))
    assert out.shape == img.shape
    flat = torch.full((3, 4, 4), 0.25)
    torch.testing.assert_close(filter2d(flat, gaussian_kernel(21, 3.0)), flat)


# ---------------------------------------------------------------------------- noise, JPEG


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_has_its_stated_sigma(gray):
    img = torch.full((3, 128, 128), 0.5)
    noise = gaussian_noise(img, 10.0, gray, _gen(0))
    assert noise.std().item() == pytest.approx(10.0 / 255, rel=0.05)
    assert abs(noise.mean().item()) < 0.1 * 10.0 / 255
    assert torch.equal(noise[0], noise[2]) is gray


def test_poisson_noise_scales_and_is_zero_mean():
    img = torch.full((3, 128, 128), 0.5)
    img[:, :64] = 0.25  # two grey levels -> 2 photons per unit of intensity
    a = poisson_noise(img, 1.0, False, _gen(0))
    b = poisson_noise(img, 2.0, False, _gen(0))
    torch.testing.assert_close(b, 2 * a)
    # Poisson with rate λ = 2·0.5 = 1 at 0.5: the noise's std is √λ / 2 = 0.5.
    assert a[:, 64:].std().item() == pytest.approx(0.5, rel=0.05)
    assert abs(a.mean().item()) < 0.02


def test_higher_jpeg_quality_gives_higher_psnr():
    img = _shapes(1)[0].permute(2, 0, 1).float() / 255

    def psnr(q):
        mse = (jpeg(img, q) - img).pow(2).mean().item()
        return 10 * math.log10(1 / mse)

    values = [psnr(q) for q in (30, 60, 95)]
    assert values[0] < values[1] < values[2], values
    assert jpeg(img, 95).shape == img.shape


# ---------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_seed_same_bytes_and_seeds_differ(preset):
    cfg = PRESETS[preset]()
    hr = _shapes(1)[0]
    a = degrade(hr, cfg, _gen(5))
    assert a.dtype == torch.uint8 and a.shape == (8, 8, 3)
    assert torch.equal(degrade(hr, cfg, _gen(5)), a)
    others = [degrade(hr, cfg, _gen(s)) for s in range(6, 10)]
    assert all(not torch.equal(o, a) for o in others)


def test_an_image_degrades_the_same_in_any_batch():
    cfg = DegradeConfig.shapes32()
    hr = _shapes(4)
    batch = degrade(hr, cfg, [_gen(100 + i) for i in range(4)])
    assert batch.shape == (4, 8, 8, 3)
    for i in (0, 3):
        assert torch.equal(degrade(hr[i], cfg, _gen(100 + i)), batch[i])
    pair = degrade(hr[2:4], cfg, [_gen(102), _gen(103)])
    assert torch.equal(pair, batch[2:4])


def test_degraded_images_are_worse_than_the_hr_but_related():
    cfg = DegradeConfig.shapes32()
    hr = _shapes(16)
    lr = degrade(hr, cfg, [_gen(i) for i in range(16)])
    up = upsample_bicubic(lr, 4).float()
    err = (up - hr.float()).abs().mean().item()
    # Degraded and upsampled: visibly different from the HR, yet far closer than noise.
    assert 2.0 < err < 40.0, err
    clean = upsample_bicubic(_box_down(hr, 4), 4).float()
    assert (clean - hr.float()).abs().mean().item() < err


def _box_down(x: torch.Tensor, s: int) -> torch.Tensor:
    y = x.permute(0, 3, 1, 2).float()
    y = torch.nn.functional.avg_pool2d(y, s)
    return y.round().to(torch.uint8).permute(0, 2, 3, 1)


def test_published_preset_runs_on_small_images():
    # Real-ESRGAN's 21-tap kernels are wider than a 32 px image shrunk by 0.15.
    lr = degrade(_shapes(3), DegradeConfig.realesrgan(), [_gen(i) for i in range(3)])
    assert lr.shape == (3, 8, 8, 3)


def test_presets_round_trip_as_configs(tmp_path):
    cfg = DegradeConfig.shapes32()
    assert isinstance(cfg, Config)
    assert DegradeConfig.from_dict(cfg.to_dict()) == cfg
    assert DegradeConfig.load(cfg.save(tmp_path / "d.toml")) == cfg
    assert cfg != DegradeConfig.realesrgan()
    assert DegradeConfig.realesrgan().second.blur.sigma_range == (0.2, 1.5)


def test_bad_input_gets_a_clear_error():
    cfg = DegradeConfig.shapes32()
    with pytest.raises(DataError, match="smaller than the target 32x32"):
        degrade(_shapes(1, resolution=16)[0], cfg, _gen(0), hr_size=32)
    with pytest.raises(DataError, match="crop or resize"):
        degrade(_shapes(1, resolution=40)[0], cfg, _gen(0), hr_size=32)
    with pytest.raises(DataError, match="multiple of the scale 4"):
        degrade(torch.zeros(30, 30, 3, dtype=torch.uint8), cfg, _gen(0))
    with pytest.raises(DataError, match="uint8 RGB"):
        degrade(torch.zeros(32, 32, 3), cfg, _gen(0))
    with pytest.raises(DataError, match="one torch.Generator per image"):
        degrade(_shapes(2), cfg, _gen(0))
