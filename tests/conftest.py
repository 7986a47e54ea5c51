"""Shared pytest fixtures. Each module's fixtures live in their own section below."""

from __future__ import annotations

import pytest

# ---------------------------------------------------------------------------
# data (owner: data engineer)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory):
    """A small ``shapes`` dataset folder: 64 train + 16 validation images at 16 px, seed 0.

    Load it with ``ldmscale.data.load_dataset(tiny_shapes, split="train", resolution=16)``.
    Session-scoped and shared: do not modify the folder.
    """
    from ldmscale.data.shapes import generate_shapes

    return generate_shapes(
        tmp_path_factory.mktemp("data") / "tiny_shapes", n_train=64, n_val=16, resolution=16, seed=0
    )
