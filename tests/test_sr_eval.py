"""Super-resolution evaluation: PSNR, SSIM, probe accuracies, LR sets, SR sweep cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldmscale.data import DataError
from ldmscale.data.degrade import DegradeConfig, degrade
from ldmscale.metrics.common import MetricsError
from ldmscale.metrics.sr import attribute_hits, gaussian_window, psnr, ssim


def _images(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_psnr_of_known_errors():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[0] += 1  # MSE 1 -> 20 log10(255)
    b[1, :8] += 10  # MSE 50
    got = psnr(b, a)
    assert got[0] == pytest.approx(20 * math.log10(255))
    assert got[1] == pytest.approx(10 * math.log10(255**2 / 50))
    assert psnr(a, a)[0] == 100.0  # identical: the cap, not infinity
    with pytest.raises(MetricsError, match="one shape"):
        psnr(a, a[:, :8])


def test_ssim_hand_checked_cases():
    a = _images(3)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    # Constant images: the variances and covariance vanish, SSIM = (2xy + C1) / (x^2 + y^2 + C1).
    x, y = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y)[0] == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    w = gaussian_window()
    assert len(w) == 11 and w.sum() == pytest.approx(1) and w.argmax() == 5
    assert w[4] / w[5] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))
    # Worse images score lower; the inverted image is anti-correlated.
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255)
    assert (ssim(noisy.astype(np.uint8), a) < 0.9).all() and (ssim(255 - a, a) < 0).all()
    with pytest.raises(MetricsError, match="at least 11 px"):
        ssim(a[:, :8, :8], a[:, :8, :8])


def test_ssim_equals_scikit_image():
    from skimage import metrics  # a test dependency (pyproject's [test] extra)

    from ldmscale.data.shapes import make_example

    a = np.stack([np.asarray(make_example(0, "validation", i, 32)[0]) for i in range(3)])
    b = np.clip(a.astype(int) + np.random.default_rng(2).normal(0, 25, a.shape), 0, 255)
    b = b.astype(np.uint8)
    for x, y in zip(b, a):
        want = metrics.structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        assert ssim(x[None], y[None])[0] == pytest.approx(want, abs=1e-10)


class _ReadOut:
    """A probe stand-in with a fixed read-out: the real probe's vocabulary and label layout."""

    def __init__(self, labels: np.ndarray) -> None:
        from ldmscale.data.shapes import VOCAB

        self.vocab, self.labels = VOCAB, labels

    def predict_labels(self, images):
        return self.labels


def test_attribute_hits_count_the_true_objects_attributes():
    from ldmscale.data.shapes import VOCAB
    from ldmscale.metrics.probe import encode_attributes

    objs = [
        {"shape": VOCAB["shape"][0], "color": VOCAB["color"][1], "size": VOCAB["size"][0]},
        {"shape": VOCAB["shape"][1], "color": VOCAB["color"][0], "size": VOCAB["size"][1]},
    ]
    attrs = [
        {"objects": [objs[0] | {"position": VOCAB["position"][0]}]},
        {
            "objects": [
                objs[0] | {"position": VOCAB["position"][1]},
                objs[1] | {"position": VOCAB["position"][2]},
            ]
        },
    ]
    pred = np.stack([encode_attributes(a, VOCAB) for a in attrs])
    pred[1, 1, 1] = 3 - pred[1, 1, 1]  # wrong colour on one of image 1's objects
    got = attribute_hits(np.zeros((2, 32, 32, 3), np.uint8), attrs, _ReadOut(pred))
    np.testing.assert_allclose(got["attr_acc"], [1.0, 5 / 6])
    np.testing.assert_allclose(got["object_acc"], [1.0, 0.5])


def test_lr_set_from_a_dataset_is_fixed_and_refuses_small_hr(tiny_shapes, sr_run, tmp_path):
    from PIL import Image

    from ldmscale.sr_eval import lr_set_from_dataset, lr_set_from_folder

    data = sr_run[2]
    cfg = DegradeConfig.shapes32()
    a = lr_set_from_dataset(data, 4, 32, cfg, seed0=5)
    b = lr_set_from_dataset(data, 4, 32, cfg, seed0=5)
    assert a.lr.shape == (4, 8, 8, 3) and a.hr.shape == (4, 32, 32, 3) and len(a.attributes) == 4
    assert np.array_equal(a.lr, b.lr)
    one = degrade(torch.from_numpy(a.hr[2]), cfg, torch.Generator().manual_seed(7)).numpy()
    assert np.array_equal(a.lr[2], one)  # image i uses seed seed0 + i
    assert not np.array_equal(a.lr, lr_set_from_dataset(data, 4, 32, cfg, seed0=6).lr)
    with pytest.raises(DataError, match="HR images must be at least the target size"):
        lr_set_from_dataset(tiny_shapes, 4, 32, cfg)  # 16 px images for a 32 px target
    with pytest.raises(DataError, match="has 6 images"):
        lr_set_from_dataset(data, 7, 32, cfg)
    for i, im in enumerate(a.lr):
        Image.fromarray(im).save(tmp_path / f"{i:03d}.png")
    assert np.array_equal(lr_set_from_folder(tmp_path).lr, a.lr)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "zz.png")
    with pytest.raises(DataError, match="differ in size"):
        lr_set_from_folder(tmp_path)


def test_sr_cells_land_in_the_store_with_paired_rows(sr_run, tmp_path):
    from ldmscale.metrics.protocol import metric_rows
    from ldmscale.model import load_model
    from ldmscale.sr_eval import (
        baseline_images,
        evaluate_sr_cell,
        lr_set_from_dataset,
        prepare_sr,
        sr_context,
        sr_metric_rows,
    )
    from ldmscale.store import ResultsStore
    from ldmscale.sweep import run_cells
    from ldmscale.sweep.evaluate import cell_rows

    _, run, data = sr_run
    lrset = lr_set_from_dataset(data, 6, 32, DegradeConfig.shapes32())
    metrics = ("fd_probe", "psnr", "ssim", "attr_acc", "object_acc")
    ctx = sr_context(
        [run / "model"], lrset, metrics, rows_dir=tmp_path / "rows", bootstrap=20, probe_steps=10
    )
    cells = [ctx.cell(ctx.models[0], "ddim", s, 1.0, 6) for s in (1, 3)]
    assert cells[0].cell_id != cells[1].cell_id and cells[0].unet_evals == 6
    with ResultsStore(tmp_path / "results.sqlite") as store:
        summary = run_cells(
            cells, store, evaluate=evaluate_sr_cell, prepare=prepare_sr, progress=False
        )
        assert summary.computed == 2
        rows = store.rows()
    assert {r["steps"] for r in rows} == {1, 3} and all(r["guidance"] == 1.0 for r in rows)
    row = next(r for r in rows if r["steps"] == 3)
    assert set(row["metrics"]) == set(metrics) and row["protocol"]["sr"]["seed0"] == 0
    per_image = cell_rows(row)
    assert per_image is not None and per_image["psnr"].shape == (6,)
    assert per_image["fd_probe"].shape[0] == 6
    assert row["metrics"]["psnr"]["value"] == pytest.approx(per_image["psnr"].mean())
    # The rows are those of the cell's upscaled images.
    from ldmscale.sampling import SamplerConfig
    from ldmscale.upscale import upscale

    out = upscale(
        load_model(run / "model"), lrset.lr, list(range(6)), SamplerConfig("ddim", 3, 1.0)
    )
    again, _ = sr_metric_rows(out.images, lrset, row["protocol"])
    np.testing.assert_allclose(again["psnr"], per_image["psnr"], atol=1e-3)
    base = baseline_images(lrset, 4, load_model(run / "model").vae)
    assert base["bicubic"].shape == base["autoencoder"].shape == (6, 32, 32, 3)
    with pytest.raises(MetricsError, match="super-resolution metric"):
        metric_rows(out.images, [""] * 6, row["protocol"])  # not a text-to-image metric


def test_cli_sample_upscales_an_lr_set_at_any_step_count(sr_run, tmp_path, capsys):
    import json

    from PIL import Image

    from ldmscale.cli import main

    _, run, data = sr_run
    model = str(run / "model")
    out = tmp_path / "out"
    args = ["sample", "--model", model, "--lr-dataset", str(data), "--n", "2", "--no-progress"]
    for steps in ("1", "250"):
        assert main([*args, "--steps", steps, "--sampler", "ddim", "--out", str(out)]) == 0
        record = json.loads((out / "samples.json").read_text())
        assert record["nfe"] == int(steps) and record["sampler"]["guidance"] == 1.0
    assert np.asarray(Image.open(out / "00001.png")).shape == (32, 32, 3)
    capsys.readouterr()
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(lr_dir / "a.png")
    bad = [
        (["--lr-folder", str(lr_dir)], r"uint8 \[N, 8, 8, 3\]"),  # LR of the wrong size
        (["--prompt", "a red circle"], "is a super-resolution model"),
        (["--lr-folder", str(lr_dir), "--guidance", "3"], "without classifier-free guidance"),
    ]
    for extra, match in bad:
        rc = main(
            ["sample", "--model", model, *extra, "--out", str(tmp_path / "x"), "--steps", "1"]
        )
        assert rc != 0
        assert __import__("re").search(match, capsys.readouterr().err), extra


def test_cli_sweep_takes_sr_models_on_their_lr_set(sr_run, tmp_path, capsys):
    """``ldmscale sweep`` over SR models: the validation LR set instead of prompts, guidance 1,
    the SR metrics; the same cells as planning them by hand (so a rerun resumes); CFG refused."""
    import json

    from ldmscale.cli import main
    from ldmscale.sr_eval import lr_set_from_dataset, sr_context
    from ldmscale.store import ResultsStore

    _, run, data = sr_run
    store = tmp_path / "results.sqlite"
    args = ["sweep", "--models", str(run / "model"), "--dataset", str(data), "--samplers", "ddim", "--steps", "1,2", "--guidance", "1", "--n-images", "4",
            "--metrics", "psnr,ssim", "--store", str(store), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["computed"] == 2
    with ResultsStore(store) as s:
        rows = s.rows()
    assert sorted(r["steps"] for r in rows) == [1, 2] and {r["guidance"] for r in rows} == {1.0}
    assert all(set(r["metrics"]) == {"psnr", "ssim"} for r in rows)
    lrset = lr_set_from_dataset(data, 4, 32, DegradeConfig.shapes32())
    ctx = sr_context([run / "model"], lrset, ("psnr", "ssim"))
    want = ctx.cell(ctx.models[0], "ddim", 2, 1.0, 4, "leading")
    assert want.cell_id in {r["cell_id"] for r in rows}
    assert main(args) == 0  # resumed: nothing computed
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["computed"] == 0
    bad = list(args)
    bad[bad.index("--guidance") + 1] = "1,3"
    assert main(bad) == 2
    assert "without CFG" in capsys.readouterr().err
