"""Blur kernels of the Real-ESRGAN degradation, written from their formulas.

Every kernel is a ``[k, k]`` float64 tensor (``k`` odd) on pixel offsets
``x, y`` in ``-(k // 2) .. k // 2`` from the centre, normalised to sum to 1:

- Gaussian: ``exp(-1/2 · q)``, with ``q = [x, y] Σ⁻¹ [x, y]ᵀ`` and
  ``Σ = R(θ) diag(σx², σy²) R(θ)ᵀ`` (σ in pixels, θ in radians, counter-clockwise);
- generalised Gaussian: ``exp(-1/2 · q^β)`` (β = 1 is the Gaussian);
- plateau: ``1 / (1 + q^β)``;
- sinc (circular low-pass): ``ω_c J1(ω_c r) / (2π r)``, ``ω_c²/(4π)`` at ``r = 0``,
  with ``r = √(x² + y²)`` in pixels and the cut-off ``ω_c`` in radians per pixel.

:func:`random_kernel` draws one of the six Gaussian-family types
(``KERNEL_TYPES``) with its parameters as Real-ESRGAN does (Wang et al. 2021), from a
``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import scipy.special
import torch

KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
"""The Gaussian-family kernel types, in the order of a config's ``kernel_prob``."""


def _check_size(size: int) -> None:
    if size < 1 or size % 2 != 1:
        raise ValueError(f"kernel size must be a positive odd number of pixels, got {size}")


def _offsets(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel offsets ``(x, y)`` from the centre, each ``[k, k]`` float64 (x along columns)."""
    _check_size(size)
    r = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return x, y


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """``q = [x, y] Σ⁻¹ [x, y]ᵀ`` on the kernel grid, for the rotated covariance Σ."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"kernel sigmas must be positive, got ({sigma_x}, {sigma_y})")
    x, y = _offsets(size)
    c, s = math.cos(theta), math.sin(theta)
    # Rotate the offsets into the kernel's principal axes: u = Rᵀ [x, y].
    u = c * x + s * y
    v = -s * x + c * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel: torch.Tensor) -> torch.Tensor:
    return kernel / kernel.sum()


def gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0
) -> torch.Tensor:
    """Anisotropic Gaussian ``exp(-q/2)``; ``sigma_y=None`` makes it isotropic."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(torch.exp(-0.5 * q))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None, theta: float, beta: float
) -> torch.Tensor:
    """Generalised Gaussian ``exp(-q^β / 2)``: flatter top for β > 1, heavier tails for β < 1."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(torch.exp(-0.5 * q.pow(beta)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None, theta: float, beta: float
) -> torch.Tensor:
    """Plateau-shaped kernel ``1 / (1 + q^β)``."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(1.0 / (1.0 + q.pow(beta)))


def sinc_kernel(size: int, omega_c: float) -> torch.Tensor:
    """Circular low-pass (2-D sinc) kernel with cut-off ``omega_c`` in radians per pixel.

    Ideal low-pass filter's impulse response ``ω_c J1(ω_c r) / (2π r)`` truncated to
    ``size × size``; it rings (over- and undershoots) at edges, which is its purpose.
    """
    if not 0 < omega_c <= math.pi:
        raise ValueError(f"sinc cut-off must be in (0, π] radians per pixel, got {omega_c}")
    x, y = _offsets(size)
    r = torch.sqrt(x**2 + y**2)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    # scipy's J1 is accurate to float64 precision; torch.special.bessel_j1 is off by ~1e-7.
    j1 = torch.from_numpy(scipy.special.j1((omega_c * safe_r).numpy()))
    k = omega_c * j1 / (2 * math.pi * safe_r)
    k = torch.where(r == 0, torch.full_like(r, omega_c**2 / (4 * math.pi)), k)
    return _normalised(k)


def pulse_kernel(size: int = 1) -> torch.Tensor:
    """The identity kernel: 1 at the centre, 0 elsewhere."""
    x, y = _offsets(size)
    return ((x == 0) & (y == 0)).to(torch.float64)


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from ``U[low, high)`` as a Python float."""
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def choice(generator: torch.Generator, probs: Sequence[float]) -> int:
    """Index drawn with the given (not necessarily normalised) probabilities."""
    p = torch.tensor(probs, dtype=torch.float64)
    if p.numel() == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"probabilities must be non-negative with a positive sum, got {probs}")
    return int(torch.multinomial(p, 1, generator=generator).item())


def _beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    # Real-ESRGAN draws β below or above 1 with probability 1/2 each (for the plateau too,
    # so with its published β range [1, 2] half the plateau kernels have β = 1 exactly).
    if uniform(generator, 0.0, 1.0) < 0.5:
        return uniform(generator, beta_range[0], 1.0)
    return uniform(generator, 1.0, beta_range[1])


def random_kernel(
    generator: torch.Generator,
    size: int,
    kernel_prob: Sequence[float],
    sigma_range: tuple[float, float],
    betag_range: tuple[float, float],
    betap_range: tuple[float, float],
) -> torch.Tensor:
    """One random Gaussian-family kernel: type by ``kernel_prob`` (over ``KERNEL_TYPES``),
    σx (and, anisotropic, σy and θ ~ U[-π, π]) from ``sigma_range`` in pixels, β from
    ``betag_range``/``betap_range``. Draw order: type, σx, [σy, θ], [β]."""
    if len(kernel_prob) != len(KERNEL_TYPES):
        raise ValueError(
            f"kernel_prob needs {len(KERNEL_TYPES)} entries for {KERNEL_TYPES}, got {kernel_prob}"
        )
    kind = KERNEL_TYPES[choice(generator, kernel_prob)]
    sigma_x = uniform(generator, *sigma_range)
    sigma_y, theta = sigma_x, 0.0
    if kind.endswith("aniso"):
        sigma_y = uniform(generator, *sigma_range)
        theta = uniform(generator, -math.pi, math.pi)
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(
            size, sigma_x, sigma_y, theta, _beta(generator, betag_range)
        )
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _beta(generator, betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, theta)
