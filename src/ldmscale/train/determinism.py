"""Where a training step's randomness and rows come from, so that only the step count is
needed to resume exactly.

- Randomness of step ``s`` on process ``p`` (posterior sample, noise, timesteps, caption-dropout
  mask, ...) comes from :func:`step_generator`, a CPU generator seeded with
  ``hash(seed, s, p)``.
- Data order: the rows form one endless stream, the concatenation of permutations
  ``perm(seed, epoch)``; step ``s`` consumes stream positions ``[s*B, (s+1)*B)`` of the global
  batch ``B``, process ``p`` taking its ``B / P`` share (:class:`DataOrder`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a hash of ``parts`` (e.g. ``(seed, "step", s, rank)``)."""
    text = json.dumps([str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator all of step ``step``'s randomness on process ``rank`` comes from."""
    return torch.Generator().manual_seed(derive_seed(seed, "step", step, rank))


class DataOrder:
    """Endless stream of row indices: permutation ``perm(seed, epoch)`` after permutation."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int, global_batch: int, rank: int, world: int) -> torch.Tensor:
        """Rows of process ``rank``'s share of step ``step``'s global batch."""
        local = global_batch // world
        start = step * global_batch + rank * local
        pos = torch.arange(start, start + local)
        out = torch.empty(local, dtype=torch.long)
        epochs = pos // self.n
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self.perm(int(e))[pos[m] % self.n]
        return out
