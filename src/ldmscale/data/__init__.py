"""Datasets: the embedded procedural ``shapes`` set and user image-caption folders."""

from ldmscale.data.dataset import DataError

__all__ = ["DataError"]
