"""Sampling cost: the one place that says what a step, an evaluation and a FLOP count.

Conventions (the paper's Sec. 3 and DESIGN.md):

* ``nfe``: sampler steps; one step is one UNet evaluation per image, whether or not CFG's
  doubled batch runs (the paper counts a guided step once).
* UNet evaluations per image per step (a denoiser's ``evaluations_per_step``): 2 for CFG on
  a doubled batch (``w != 1``), 1 without guidance or with guidance given to the UNet as an
  embedding (one forward, no doubling).
* ``sampling_cost`` = normalized cost x steps, where normalized cost is the UNet's GFLOPs
  (``xla`` convention: a multiply-add counts once) over those of the same UNet at the
  paper's reference width c = 320 with SD's 8 heads, at the same latent and context
  (:func:`ldmscale.family.normalized_cost`).
* Training compute = normalized cost x training steps (the paper's axis, Fig. 3), a step of
  the trained model (forward and backward) counted as 3 forwards; an objective that runs
  further UNet forwards per row and step (a distillation teacher, a target network) adds
  ``extra_forwards / 3`` of a step each (:func:`train_compute`).
* FLOPs per image: the actual UNet FLOPs of the evaluations (``dense`` convention, 2 per
  multiply-add; the doubled CFG batch included); VAE and text encoder not counted.
"""

from __future__ import annotations


def cfg_evaluations(guidance: float) -> int:
    """UNet evaluations per image per step of classifier-free guidance on a doubled batch:
    2, or 1 at ``w = 1`` (exactly the conditional model: the unconditional half is skipped)."""
    return 2 if guidance != 1.0 else 1


def evaluations_per_step(guidance: float, guidance_embedded: bool = False) -> int:
    """UNet evaluations per image per step of a sampler at guidance ``w``: 1 for a model that
    takes ``w`` as an embedding (``time_cond_proj_dim``: one forward, no doubled batch, any
    ``w``), else :func:`cfg_evaluations`."""
    return 1 if guidance_embedded else cfg_evaluations(guidance)


def nfe(steps: int) -> int:
    """Network function evaluations per image as the paper counts them: the steps."""
    return int(steps)


def unet_evaluations(steps: int, evaluations_per_step: int, n_images: int = 1) -> int:
    """UNet evaluations of ``n_images`` images (the doubled batch counted twice)."""
    return n_images * steps * evaluations_per_step


def sampling_cost(norm_cost: float, steps: int) -> float:
    """Normalized cost x steps: the paper's sampling cost of one image."""
    return norm_cost * steps


def train_compute(norm_cost: float, steps: int, extra_forwards_per_step: float = 0.0) -> float:
    """Normalized training compute after ``steps`` steps: ``norm_cost x steps x (1 + extra /
    3)``, with ``extra`` the objective's UNet forwards per row and step besides the trained
    model's (of a network of the same width; 0 for text-to-image, whose value stays
    ``norm_cost x steps``)."""
    return float(norm_cost) * (1.0 + extra_forwards_per_step / 3.0) * int(steps)


def sampling_flops(
    gflops_per_forward: float, steps: int, evaluations_per_step: int, n_images: int = 1
) -> float:
    """UNet FLOPs of sampling ``n_images`` images (``gflops_per_forward`` at batch 1)."""
    return gflops_per_forward * 1e9 * (steps * evaluations_per_step) * n_images
