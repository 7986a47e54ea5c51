"""Tests for ldmscale.paired: the paired bootstrap over shared images and its fallback."""

from __future__ import annotations

import numpy as np
import pytest

from ldmscale.paired import (
    PairedError,
    RowSource,
    ci_overlap_outcome,
    compare_rows,
    describe_methods,
    paired_difference,
)


def _mean(r: np.ndarray) -> float:
    return float(np.mean(r))


def test_identical_cells_tie():
    rows = np.random.default_rng(0).random(64)
    res = paired_difference(rows, rows.copy(), _mean)
    assert res.diff == 0.0 and res.lo == 0.0 and res.hi == 0.0
    assert res.outcome() == "tie" and res.p_better == 0.5 and res.n == 64


def test_clearly_better_cell_wins_either_direction():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 128)
    b = a + 1.0 + rng.normal(0, 0.1, 128)  # B larger on every image
    low = paired_difference(a, b, _mean, direction="min")
    assert low.outcome() == "a" and low.hi < 0 and low.p_better == 1.0
    assert low.diff == pytest.approx(np.mean(a) - np.mean(b))
    high = paired_difference(a, b, _mean, direction="max")
    assert high.outcome() == "b" and high.p_better == 0.0


def test_pairing_detects_what_marginal_ci_overlap_misses():
    """Shared per-image noise (hard prompts) dwarfs a small consistent gain: the marginal CIs
    overlap, the paired CI of the difference excludes 0."""
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 1.0, 64)
    a = base - 0.1 + rng.normal(0, 0.02, 64)
    b = base + rng.normal(0, 0.02, 64)

    def marginal(x: np.ndarray) -> tuple[float, float, float]:
        boots = [np.mean(x[rng.integers(0, 64, 64)]) for _ in range(400)]
        lo, hi = np.quantile(boots, [0.025, 0.975])
        return float(np.mean(x)), float(lo), float(hi)

    weak = ci_overlap_outcome(marginal(a), marginal(b), "min")
    assert weak.outcome == "tie" and weak.method == "ci_overlap"
    strong = paired_difference(a, b, _mean, n_boot=400, direction="min")
    assert strong.outcome() == "a" and strong.hi < 0


def test_set_statistic_and_prefix():
    """A set statistic (a distance of the feature mean to 0, Frechet-like) on [N, D] features;
    rows of unequal length are paired on their common prefix."""
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, (80, 4))
    b = rng.normal(0.8, 1.0, (64, 4))

    def dist(f: np.ndarray) -> float:
        return float(np.sum(f.mean(0) ** 2))

    res = paired_difference(a, b, dist, n_boot=100)
    assert res.n == 64 and res.outcome() == "a"
    assert res.diff == pytest.approx(dist(a[:64]) - dist(b))


def test_bad_arguments():
    x = np.zeros(8)
    with pytest.raises(PairedError, match="level"):
        paired_difference(x, x, _mean, level=1.5)
    with pytest.raises(PairedError, match="n_boot"):
        paired_difference(x, x, _mean, n_boot=1)
    with pytest.raises(PairedError, match="2 paired images"):
        paired_difference(x[:1], x, _mean)
    with pytest.raises(PairedError, match="direction"):
        paired_difference(x, x, _mean, direction="up")


def _cell(cid: str, value: float, half: float | None = 0.5, seed0: int = 0) -> dict:
    m = {"value": value, "n": 64}
    if half is not None:
        m.update(lo=value - half, hi=value + half)
    return {"cell_id": cid, "seed0": seed0, "metrics": {"alignment": m}, "protocol": {}}


def test_compare_rows_paired_and_fallbacks():
    rng = np.random.default_rng(4)
    base = rng.random(64)
    store = {"a": base + 0.05, "b": base}
    source = RowSource(
        rows_fn=lambda r: {"alignment": store[r["cell_id"]]} if r["cell_id"] in store else None
    )
    a, b = _cell("a", 0.55, 0.2), _cell("b", 0.5, 0.2)
    got = compare_rows(a, b, "alignment", "max", source)
    assert got.method == "paired" and got.outcome == "a" and got.lo > 0
    assert "paired" in got.ci_text()
    # Rows missing for one cell: the overlapping stored CIs give a tie, labelled weaker.
    c = _cell("c", 0.5, 0.2)
    weak = compare_rows(a, c, "alignment", "max", source)
    assert weak.method == "ci_overlap" and weak.outcome == "tie" and "weaker" in weak.note
    # Different seed sets cannot be paired.
    other = _cell("b", 0.5, 0.2, seed0=1000)
    assert compare_rows(a, other, "alignment", "max", source).method == "ci_overlap"
    # No CIs: point estimate only.
    pt = compare_rows(_cell("x", 0.6, None), _cell("y", 0.5, None), "alignment", "max")
    assert pt.method == "point" and pt.outcome == "a"
    text = describe_methods([got, weak, pt])
    assert "1 by paired bootstrap" in text and "1 by CI overlap" in text and "weaker" in text


def test_row_source_finds_a_relative_reference_dataset_beside_the_rows(tmp_path, monkeypatch):
    """A study stores its dataset path relative to the folder it ran from; from another folder
    the row source looks it up under the parents of the rows folder."""
    from ldmscale.paired import RowSource

    (tmp_path / "outputs" / "study" / "data" / "shapes").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    protocol = {"reference": {"dataset": "outputs/study/data/shapes", "split": "validation"}}
    source = RowSource(tmp_path / "outputs" / "study" / "rows")
    monkeypatch.chdir(tmp_path)
    assert source._located(protocol) == protocol  # found from here: unchanged
    monkeypatch.chdir(tmp_path / "elsewhere")
    found = source._located(protocol)["reference"]
    assert found["dataset"] == str((tmp_path / "outputs/study/data/shapes").resolve())
    assert found["split"] == "validation"
    missing = {"reference": {"dataset": "outputs/other/data"}}
    assert source._located(missing) == missing  # nowhere: left for the caller's error
