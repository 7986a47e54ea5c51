"""Tests for ldmscale.sweep.evaluate: the built-in evaluator on a tiny model (real sampling and
metrics, the row cache, CLIP score), and cell_rows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from ldmscale.adaptive import (
    AdaptiveConfig,
    adaptive_search,
)
from ldmscale.metrics.common import MetricsError
from ldmscale.store import ResultsStore
from ldmscale.sweep import (
    Cell,
    SweepConfig,
    plan_sweep,
    run_sweep,
)
from sweep_helpers import OLD_PROTOCOL, PROMPTS, make_models, small_cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd_dir) -> list[str]:
    return make_models(tmp_path_factory.mktemp("models"), tiny_sd_dir)


@pytest.mark.slow
def test_evaluate_cell_samples_and_scores_for_real(tmp_path, tiny_shapes, tiny_sd_dir, monkeypatch):
    monkeypatch.setenv("LDMSCALE_CACHE", str(tmp_path / "cache"))
    from ldmscale.sweep import evaluate_cell

    cfg = SweepConfig(
        models=(str(tiny_sd_dir),),
        samplers=("ddim",),
        steps=(2,),
        guidance=(1.0, 3.0),
        n_images=4,
        dataset=str(tiny_shapes),
        resolution=16,
        metrics=("fd_probe", "alignment"),
        bootstrap=10,
        batch_size=4,
        store=str(tmp_path / "r.sqlite"),
    )
    with ResultsStore(cfg.store) as store:
        summary = run_sweep(cfg, store, progress=False)  # the built-in evaluator
        rows = store.rows()
    assert summary.computed == len(rows) == 2
    for row in rows:
        assert row["nfe"] == 2 and row["flops"] > 0
        assert row["norm_cost"] > 0 and row["sampling_cost"] == pytest.approx(2 * row["norm_cost"])
        fd, align = row["metrics"]["fd_probe"], row["metrics"]["alignment"]
        assert math.isfinite(fd["value"]) and fd["value"] >= 0 and fd["lo"] <= fd["hi"]
        assert 0.0 <= align["lo"] <= align["hi"] <= 1.0 and fd["n"] == 4
        assert row["provenance"]["extra"]["feature_networks"]["fd_probe"].startswith("probe:")
    # CFG doubles the FLOPs of a cell (w = 3) relative to no guidance (w = 1)
    by_w = {(r["sampler"], r["guidance"]): r for r in rows}
    assert by_w[("ddim", 3.0)]["flops"] == pytest.approx(2 * by_w[("ddim", 1.0)]["flops"])
    # per-image seeds: the same cell at another batch size gives the same scores
    cell = next(c for c in plan_sweep(cfg).cells if c.sampler == "ddim" and c.guidance == 3.0)
    again = evaluate_cell(Cell(**{**cell.__dict__, "batch_size": 2}))
    stored = by_w[("ddim", 3.0)]["metrics"]
    assert again.metrics["alignment"]["value"] == stored["alignment"]["value"]
    assert again.metrics["fd_probe"]["value"] == pytest.approx(
        stored["fd_probe"]["value"], rel=1e-3
    )
    # the row cache: a 4-image cell after a 2-image one samples only images 2 and 3, and scores
    # like the uncached cell; a second 4-image evaluation samples nothing
    rows_dir = str(tmp_path / "rows")
    cached = dataclasses.replace(cell, rows_dir=rows_dir)
    half = plan_sweep(cfg).context.cell(cell.model, "ddim", 2, 3.0, 2)
    first = evaluate_cell(dataclasses.replace(half, rows_dir=rows_dir))
    assert first.extra["reused_images"] == 0 and first.metrics["fd_probe"]["n"] == 2
    grown = evaluate_cell(cached)
    assert grown.extra["reused_images"] == 2 and grown.metrics["fd_probe"]["n"] == 4
    assert grown.metrics["alignment"]["value"] == stored["alignment"]["value"]
    assert grown.metrics["fd_probe"]["value"] == pytest.approx(
        stored["fd_probe"]["value"], rel=1e-3
    )
    assert grown.flops == pytest.approx(by_w[("ddim", 3.0)]["flops"])

    def no_sampling(*args, **kwargs):
        raise AssertionError("a fully cached cell must not sample")

    monkeypatch.setattr("ldmscale.sampling.generate", no_sampling)
    repeat = evaluate_cell(cached)
    assert repeat.extra["reused_images"] == 4
    assert repeat.metrics["fd_probe"]["value"] == grown.metrics["fd_probe"]["value"]
    assert repeat.nfe == grown.nfe and repeat.norm_cost == grown.norm_cost
    monkeypatch.undo()

    # the adaptive race with the real evaluator: its first-round cells (8 images) are already
    # stored by a plain sweep without a row cache; the race rescores them for their rows
    race_cfg = cfg.replace(
        guidance=(1.0, 3.0), n_images=16, store=str(tmp_path / "race.sqlite"), bootstrap=0
    )
    with ResultsStore(race_cfg.store) as store:
        run_sweep(race_cfg.replace(n_images=8), store, progress=False)
        res = adaptive_search(race_cfg, store, adaptive=AdaptiveConfig(n_boot=10), progress=False)
    assert res.choices[0]["guidance"] in (1.0, 3.0) and res.choices[0]["trace"][0]["n"] == 8
    evaluated = sum(len(t["guidance"]) for t in res.choices[0]["trace"])
    assert res.computed == evaluated - 2  # round 0 came from the store, not recomputed
    race_rows = Path(race_cfg.store + ".rows")
    assert len(list(race_rows.glob("*.npz"))) == 2  # both scales' images are in the cache


def test_sweep_with_clip_score(tmp_path, tiny_sd_dir, tiny_clip_model_dir):
    """clip_score end to end: sample a tiny SD folder, score with a local CLIP, store a CI."""
    from ldmscale.metrics.clip_score import clip_score
    from ldmscale.metrics.protocol import metric_rows
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig, generate

    cfg = SweepConfig(
        models=(str(tiny_sd_dir),),
        samplers=("ddim",),
        steps=(2,),
        guidance=(1.0, 3.0),
        n_images=4,
        prompts=PROMPTS,
        metrics=("clip_score",),
        clip_model=str(tiny_clip_model_dir),
        bootstrap=20,
        batch_size=4,
        store=str(tmp_path / "r.sqlite"),
    )
    with ResultsStore(cfg.store) as store:
        summary = run_sweep(cfg, store, progress=False)
        rows = store.rows()
    assert summary.computed == len(rows) == 2
    for row in rows:
        score = row["metrics"]["clip_score"]
        assert -1.0 <= score["lo"] < score["hi"] <= 1.0 and score["n"] == 4
        assert score["lo"] <= score["value"] <= score["hi"]
        networks = row["provenance"]["extra"]["feature_networks"]
        assert networks["clip_score"] == str(tiny_clip_model_dir)
    # the stored value is the mean raw cosine of the cell's own images and prompts
    row = next(r for r in rows if r["guidance"] == 3.0)
    images = generate(
        load_model(tiny_sd_dir), list(PROMPTS), [0, 1, 2, 3], SamplerConfig("ddim", 2, 3.0),
        batch_size=4, progress=False,
    ).images  # fmt: skip
    expected = clip_score(images, list(PROMPTS), tiny_clip_model_dir).mean
    assert row["metrics"]["clip_score"]["value"] == pytest.approx(expected, abs=1e-5)

    # no clip_model: a clear error before any cell is sampled, and from metric_rows too
    missing = cfg.replace(clip_model=None, store=str(tmp_path / "missing.sqlite"))
    with pytest.raises(MetricsError, match="clip_score metric needs a CLIP model.*clip_model"):
        run_sweep(missing, progress=False)
    with ResultsStore(missing.store) as store:
        assert store.rows() == []
    with pytest.raises(MetricsError, match="set `clip_model`"):
        metric_rows(images, list(PROMPTS), {"metrics": ["clip_score"], "bootstrap": 0})
    not_clip = cfg.replace(clip_model=str(tmp_path), store=str(tmp_path / "bad.sqlite"))
    with pytest.raises(MetricsError, match="not a CLIP model folder"):
        run_sweep(not_clip, progress=False)


@pytest.fixture
def fake_sampling(monkeypatch):
    """The real :func:`evaluate_cell` with sampling and scoring replaced by arithmetic: image
    ``i`` "is" its seed, and its alignment row is ``seed + 1000 * guidance``. Records every
    SamplerConfig and the seeds sampled with it."""
    import types

    calls: list[tuple] = []

    def generate(model, prompts, seeds, cfg, batch_size=16, progress=False):
        calls.append((cfg, list(seeds)))
        images = np.zeros((len(seeds), 2, 2, 3), np.float64)
        images[:, 0, 0, 0] = np.asarray(seeds) + 1000 * cfg.guidance
        return types.SimpleNamespace(
            images=images, nfe=cfg.steps, flops=2.0 * len(seeds), sampling_cost=0.1 * cfg.steps
        )

    def metric_rows(images, prompts, protocol):
        return {"alignment": images[:, 0, 0, 0].astype(np.float64)}, {"alignment": "fake"}

    monkeypatch.setattr("ldmscale.sampling.generate", generate)
    monkeypatch.setattr("ldmscale.sweep.evaluate.metric_rows", metric_rows)
    monkeypatch.setattr("ldmscale.metrics.protocol.prepare_metrics", lambda *a, **k: None)
    monkeypatch.setattr(
        "ldmscale.sweep.evaluate._load_model_cached", lambda m: types.SimpleNamespace(norm_cost=0.1)
    )
    return calls


def test_evaluate_cell_samples_with_the_cells_spacing(models, tmp_path, fake_sampling):
    from ldmscale.sweep import evaluate_cell

    cfg = small_cfg(models, tmp_path, metrics=("alignment",), steps=(4,), samplers=("ddim",))
    for spacing in ("trailing", "leading", "linspace"):
        cell = plan_sweep(cfg.replace(timestep_spacings=(spacing,))).cells[0]
        evaluate_cell(cell)
        assert fake_sampling[-1][0].timestep_spacing == spacing
        assert fake_sampling[-1][0].steps == 4 and fake_sampling[-1][0].name == "ddim"


def test_seed_sets_have_their_own_rows_and_cell_rows_reads_them(models, tmp_path, fake_sampling):
    from ldmscale.rowcache import family_key
    from ldmscale.sweep import cell_rows, metric_statistic

    rows_dir = tmp_path / "rows"
    cfg = small_cfg(
        models[:1],
        tmp_path,
        metrics=("alignment",),
        samplers=("ddim",),
        steps=(4,),
        guidance=(3.0,),
        n_images=8,
        rows_dir=str(rows_dir),
    )
    fresh = cfg.replace(seed0=10_000)
    # seed0 = 0 keeps the old family key; another seed0 gets its own
    sampler = {"name": "ddim", "steps": 4, "guidance": 3.0}
    assert family_key("h", sampler, OLD_PROTOCOL, 0) == family_key("h", sampler, OLD_PROTOCOL)
    assert family_key("h", sampler, OLD_PROTOCOL, 10_000) != family_key("h", sampler, OLD_PROTOCOL)
    with ResultsStore(cfg.store) as store:
        run_sweep(cfg, store, progress=False)
        run_sweep(fresh, store, progress=False)
        # growing seed set 0 afterwards reuses its 8 images: the fresh set did not replace them
        run_sweep(cfg.replace(n_images=12), store, progress=False)
        rows = store.rows()
    assert [r["seed0"] for r in rows] == [0, 10_000, 0]
    assert [seeds for _, seeds in fake_sampling] == [
        list(range(8)),
        list(range(10_000, 10_008)),
        list(range(8, 12)),
    ]
    assert len(list(rows_dir.glob("*.npz"))) == 2
    assert rows[2]["provenance"]["extra"]["reused_images"] == 8
    for row in rows:
        assert row["provenance"]["rows_dir"] == str(rows_dir.resolve())
        got = cell_rows(row)  # the folder from the row's provenance
        n, s0 = row["n_images"], row["seed0"]
        np.testing.assert_array_equal(got["alignment"], np.arange(s0, s0 + n) + 3000.0)
        value = metric_statistic("alignment", row["protocol"], got["alignment"])
        assert value == pytest.approx(row["metrics"]["alignment"]["value"])
        assert metric_statistic("alignment", row["protocol"])(got["alignment"]) == value
    # the 8-image cell of seed set 0 reads the first 8 of the (now 12-image) family file
    assert len(cell_rows(rows[0], rows_dir)["alignment"]) == 8
    # misses are None, never someone else's images
    assert cell_rows(rows[0], tmp_path / "nowhere") is None
    assert cell_rows({**rows[0], "n_images": 13}) is None
    other_seeds = {**rows[0]["provenance"], "seeds": list(range(1, 9))}
    assert cell_rows({**rows[0], "seed0": None, "provenance": other_seeds}) is None
    other_prompts = {**rows[0]["provenance"], "prompt_keys_hash": "0" * 16}
    assert cell_rows({**rows[0], "provenance": other_prompts}) is None
    no_dir = {k: v for k, v in rows[0]["provenance"].items() if k != "rows_dir"}
    assert cell_rows({**rows[0], "provenance": no_dir}) is None
    assert cell_rows({**rows[0], "provenance": no_dir}, rows_dir) is not None
