"""The trainer's exponential moving average of the model's weights."""

from __future__ import annotations

import copy
from typing import Any

import torch


class EMA:
    """Exponential moving average of a model's weights, held in a full model copy.

    Own implementation rather than diffusers' ``EMAModel``: the average lives in a real
    ``UNet2DConditionModel``, so it is saved with ``save_pretrained`` as ``unet_ema/``
    (loadable by diffusers) and restored from that folder on resume; the training state
    file then needs only the update count, not a second copy of all weights (3.5 GB per
    checkpoint at c=320). Decay after ``n`` updates: ``min(decay, (1 + n) / (10 + n))``
    (diffusers' default warm-up), so short runs are not dominated by the initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        src = [p.detach() for p in model.parameters()]
        dst = list(self.model.parameters())
        torch._foreach_lerp_(dst, [s.to(p.dtype) for s, p in zip(src, dst)], 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
