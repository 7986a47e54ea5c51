"""Image-caption datasets: ``Record``, ``ImageCaptionDataset``, ``load_dataset``, ``DataError``."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data; the message names the file and says how to fix it."""
