"""Datasets: the embedded procedural ``shapes`` set and user image-caption folders.

``load_dataset(source, split, resolution, skip_bad)`` reads an imagefolder
(``metadata.jsonl``) or COCO caption folder into an :class:`ImageCaptionDataset` of
:class:`Record` s; ``ldmscale.data.shapes.generate_shapes`` writes the embedded
``shapes`` dataset in the imagefolder format. Bad data raises :class:`DataError`.
"""

from ldmscale.data.dataset import DataError, ImageCaptionDataset, Record, load_dataset

__all__ = ["DataError", "ImageCaptionDataset", "Record", "load_dataset"]
