"""Min-SNR-gamma weighting of the text-to-image objective."""

from __future__ import annotations

import pytest
import torch

from ldmscale.objectives import make_noise_scheduler, min_snr_weights


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights(prediction_type: str) -> None:
    sched = make_noise_scheduler(prediction_type)
    t = torch.tensor([0, 100, 500, 999])
    w = min_snr_weights(sched, t, 5.0, prediction_type)
    abar = sched.alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    expect = torch.clamp(snr, max=5.0) / (snr + (1 if prediction_type == "v_prediction" else 0))
    assert torch.allclose(w, expect)
    # Low-noise steps (high SNR) are down-weighted, high-noise steps keep weight ~1 (eps).
    assert w[0] < w[-1] or prediction_type == "v_prediction"
    assert float(w.max()) <= 1.0 + 1e-6
