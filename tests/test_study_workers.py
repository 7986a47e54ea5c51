"""Training the study's widths in worker processes: the same weights as in-process training
(one thread both ways), resumable, and a failed worker named with its log."""

from __future__ import annotations

import hashlib

import pytest

from conftest import micro_study
from ldmscale.config import ConfigError
from ldmscale.study import run_study
from ldmscale.study.workers import CHILD_LOG, TrainWorkerError, train_in_workers


def _weights(run_dir) -> str:
    path = run_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_workers_train_the_same_weights_as_one_process(tmp_path):
    serial = micro_study(tmp_path / "serial")
    run_study(serial, stages=("data", "autoencoder", "train"), progress=False, log=lambda s: None)
    # Same data and autoencoder (copied stages), widths trained by 2 one-thread workers; the
    # tests run torch with one thread, so the bytes must agree.
    parallel = micro_study(tmp_path / "parallel", train_workers=2)
    lines: list[str] = []
    run_study(parallel, stages=("data", "autoencoder", "train"), progress=False, log=lines.append)
    assert any("2 at a time" in line for line in lines), lines
    trained = [line for line in lines if "trained (in a worker)" in line]
    assert len(trained) == len(parallel.widths), lines  # not "complete, reused"
    for c in serial.widths:
        assert (parallel.run_dir(c) / CHILD_LOG).is_file()
        assert _weights(parallel.run_dir(c)) == _weights(serial.run_dir(c))
    # A rerun finds every width trained and starts no worker.
    again: list[str] = []
    run_study(parallel, stages=("train",), progress=False, log=again.append)
    assert not any("at a time" in line for line in again)
    assert sum("complete, reused" in line for line in again) == len(parallel.widths)


def test_a_failed_worker_is_named_with_its_log(tmp_path):
    cfg = micro_study(tmp_path / "s").train_config(8)
    bad = cfg.replace(data=str(tmp_path / "no_such_data"), vae=str(tmp_path / "no_vae"))
    with pytest.raises(TrainWorkerError, match=r"c=8 exited with .*train\.out") as err:
        train_in_workers([bad], workers=1, progress=False, log=lambda s: None)
    assert "rerun the same command" in str(err.value)
    assert (tmp_path / "s" / "runs" / "c8" / CHILD_LOG).is_file()
    with pytest.raises(ValueError, match="workers"):
        train_in_workers([cfg], workers=0)
    with pytest.raises(ConfigError, match="train_workers must be >= 1"):
        micro_study(tmp_path / "t", train_workers=0)
