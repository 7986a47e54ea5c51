"""Tests for ldmscale.frontier and the `frontier` / `best` commands, on synthetic store rows."""

from __future__ import annotations

import json

import pytest

from ldmscale.cli import main
from ldmscale.frontier import (
    FrontierError,
    best,
    budget_verdicts,
    curves,
    default_metric,
    final_rows,
    load_rows,
    metric_direction,
    optimal_guidance,
    pareto_frontier,
    run_key,
)
from ldmscale.metrics.registry import UnknownMetricError
from ldmscale.metrics.registry import metric_direction as registry_direction


def _row(model, c, nc, sampler, steps, w, value, half=0.5, metric="fid", **extra):
    m = {"value": value, "n": 100}
    if half is not None:
        m.update(lo=value - half, hi=value + half)
    return {
        "cell_id": f"{model}-{sampler}-{steps}-{w}",
        "model": model,
        "c": c,
        "params": c * 1000,
        "norm_cost": nc,
        "sampler": sampler,
        "steps": steps,
        "guidance": w,
        "sampling_cost": nc * steps,
        "metrics": {metric: m},
        **extra,
    }


def test_direction_comes_from_the_metric_registry():
    """Higher-is-better metrics pick the largest value, lower-is-better ones the smallest; a name
    the registry does not know is an error listing the known ones, not a guess from its name."""
    values = ((2.0, 0.3), (3.0, 0.6), (4.0, 0.5))
    rows = [_row("a", 8, 0.1, "ddim", 10, w, v, metric="alignment") for w, v in values]
    assert [p.guidance for p in optimal_guidance(rows, "alignment")] == [3.0]
    as_fid = [{**r, "metrics": {"fid": r["metrics"]["alignment"]}} for r in rows]
    assert [p.guidance for p in optimal_guidance(as_fid, "fid")] == [2.0]
    odd = [{**r, "metrics": {"kid_50": r["metrics"]["alignment"]}} for r in rows]
    with pytest.raises(
        UnknownMetricError, match=r"unknown metric 'kid_50'.*known metrics.*fd_probe"
    ):
        optimal_guidance(odd, "kid_50")
    assert metric_direction is registry_direction  # one rule, re-exported


def test_optimal_guidance_picks_argmin_per_group(study_rows):
    pts = optimal_guidance(study_rows, "fid")
    groups = {(r["model"], r["sampler"], r["steps"]) for r in study_rows}
    assert len(pts) == len(groups)
    for p in pts:
        group = [
            r
            for r in study_rows
            if (r["model"], r["sampler"], r["steps"]) == (p.model, p.sampler, p.steps)
        ]
        assert p.value == min(r["metrics"]["fid"]["value"] for r in group)
        assert p.sampling_cost == pytest.approx(p.norm_cost * p.steps)
        assert p.has_ci and p.lo < p.value < p.hi


def test_optimal_guidance_higher_is_better_and_select_by(study_rows):
    by_align = optimal_guidance(study_rows, "alignment")
    for p in by_align:
        group = [
            r["metrics"]["alignment"]["value"]
            for r in study_rows
            if (r["model"], r["sampler"], r["steps"]) == (p.model, p.sampler, p.steps)
        ]
        assert p.value == max(group)
    # Report alignment at the FID-optimal guidance (the paper's choice of selector).
    by_fid = {
        (p.model, p.sampler, p.steps): p.guidance for p in optimal_guidance(study_rows, "fid")
    }
    at_fid = optimal_guidance(study_rows, "alignment", select_by="fid")
    assert all(p.metric == "alignment" for p in at_fid)
    assert {(p.model, p.sampler, p.steps): p.guidance for p in at_fid} == by_fid
    # alignment grows with w up to 5 in the synthetic data, FID's optimum is lower.
    assert any(p.guidance != by_fid[(p.model, p.sampler, p.steps)] for p in by_align)


def test_unknown_metric_names_the_stored_ones(study_rows):
    with pytest.raises(FrontierError, match="alignment, fid"):
        optimal_guidance(study_rows, "fd_probe")


def test_default_metric_is_most_common():
    rows = [_row("a", 8, 0.1, "ddim", 10, 2.0, 5.0, metric="fd_probe")] * 3
    rows += [_row("a", 8, 0.1, "ddim", 20, 2.0, 5.0, metric="fid")]
    assert default_metric(rows) == "fd_probe"
    with pytest.raises(FrontierError, match="sweep"):
        default_metric([{"metrics": {}}])


def test_curves_and_pareto_frontier(study_rows):
    pts = optimal_guidance(study_rows, "fid", samplers=["ddim"])
    cs = curves(pts)
    assert [k[0] for k in cs] == [f"hash{c}" for c in (64, 128, 192, 320)]  # width order, by hash
    for ps in cs.values():
        assert [p.sampling_cost for p in ps] == sorted(p.sampling_cost for p in ps)
    front = pareto_frontier(pts)
    costs = [p.sampling_cost for p in front]
    values = [p.value for p in front]
    assert costs == sorted(costs) and values == sorted(values, reverse=True)
    # Every point is weakly dominated by a frontier point at the same or lower cost.
    for p in pts:
        assert any(f.sampling_cost <= p.sampling_cost and f.value <= p.value for f in front)
    # The synthetic family has small models winning cheap budgets, the big one the largest.
    assert front[0].c == 64 and front[-1].c == 320


def test_best_respects_budget_and_sampler(study_rows):
    r = best(study_rows, 3.0, "fid", samplers=["ddim", "ddpm"])
    assert r.winner.sampling_cost <= 3.0
    assert r.winner.sampler in ("ddim", "ddpm")
    assert all(rv.point.sampling_cost <= 3.0 for rv in r.rivals)
    assert len({rv.point.c for rv in r.rivals}) == len(r.rivals)  # one per other width
    assert r.winner.c not in {rv.point.c for rv in r.rivals}
    cands = [
        p
        for p in optimal_guidance(study_rows, "fid", samplers=["ddim", "ddpm"])
        if p.sampling_cost <= 3.0
    ]
    assert r.winner.value == min(p.value for p in cands)
    assert r.n_candidates == len(cands)
    with pytest.raises(FrontierError, match="cheapest configuration costs 0.35"):
        best(study_rows, 0.1, "fid")


def test_best_without_rows_falls_back_to_ci_overlap():
    rows = [
        _row("small", 8, 0.1, "ddim", 50, 3.0, 10.0, half=0.5),  # cost 5, [9.5, 10.5]
        _row("big", 32, 1.0, "ddim", 5, 3.0, 12.0, half=0.5),  # cost 5, [11.5, 12.5]
    ]
    r = best(rows, 5.0, "fid")
    assert r.decided and r.winner.model == "small" and r.runner_up.point.model == "big"
    assert r.runner_up.comparison.method == "ci_overlap"
    text = r.summary()
    assert text.startswith("budget 5 (fid, lower is better; leading spacing): best: c=8 ddim 50")
    assert "[9.5, 10.5]" in text and "weaker test" in text and "c=8 wins" in text
    assert "chosen and reported on the same images (biased)" in text

    rows[1] = _row("big", 32, 1.0, "ddim", 5, 3.0, 10.8, half=0.5)  # [10.3, 11.3] overlaps
    r = best(rows, 5.0, "fid")
    assert not r.decided and r.tied_models == ["c=8", "c=32"]
    assert "tie between c=8, c=32, no winner declared" in r.summary()
    d = r.to_dict()
    assert d["decided"] is False and json.loads(json.dumps(d))["winner"]["model"] == "small"


def test_best_without_ci_says_so():
    rows = [
        _row("small", 8, 0.1, "ddim", 50, 3.0, 10.0, half=None),
        _row("big", 32, 1.0, "ddim", 5, 3.0, 10.3, half=None),
    ]
    r = best(rows, 5.0, "fid")
    assert r.winner.model == "small" and r.no_ci and r.decided
    assert "no CI" in r.summary() and "point estimate only" in r.summary()


def test_budget_verdicts_merge_spans(study_rows):
    pts = optimal_guidance(study_rows, "fid", samplers=["ddim"])
    spans = budget_verdicts(pts)
    assert spans[0].lo_budget == pytest.approx(0.35) and spans[0].models == ["c=64"]
    assert spans[0].decided and "c=64 wins" in spans[0].text()
    assert spans[-1].hi_budget == pytest.approx(50.0) and spans[-1].models == ["c=320"]
    assert any(not s.decided and "tie between" in s.text() for s in spans)
    for a, b in zip(spans, spans[1:]):
        assert a.models != b.models and a.hi_budget < b.lo_budget


def test_checkpoint_rows_are_left_out_of_the_frontier():
    rows = [
        _row("m", 8, 0.1, "ddim", 10, 3.0, 30.0, provenance={"train_step": 100}),
        _row("m", 8, 0.1, "ddim", 10, 3.0, 12.0, provenance={"train_step": 1000}),
    ]
    rows[0]["cell_id"] += "-early"
    assert [r["provenance"]["train_step"] for r in final_rows(rows)] == [1000]
    assert best(rows, 1.0, "fid").winner.value == 12.0


def test_small_n_adaptive_cells_do_not_compete_with_full_n_cells(study_rows):
    """An adaptive search stores cheap small-N cells beside full-N ones; a lucky small-N score
    must not be picked as the optimum."""
    full = optimal_guidance(study_rows, "fid")
    lucky = dict(study_rows[0])
    lucky["cell_id"] += "-n8"
    lucky["n_images"] = 8
    lucky["guidance"] = 99.0
    lucky["metrics"] = {"fid": {"value": -1.0, "lo": -2.0, "hi": 0.0, "n": 8}}
    assert optimal_guidance([*study_rows, lucky], "fid") == full


def test_load_rows_json_and_jsonl(tmp_path, study_rows):
    (tmp_path / "rows.json").write_text(json.dumps(study_rows[:5]))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in study_rows[:5]))
    assert load_rows(tmp_path / "rows.json") == study_rows[:5]
    assert load_rows(tmp_path / "rows.jsonl") == study_rows[:5]
    with pytest.raises(FileNotFoundError, match="ldmscale sweep"):
        load_rows(tmp_path / "missing.sqlite")


def test_load_rows_from_results_store(tmp_path, study_rows):
    from ldmscale.store import ResultsStore

    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        for r in study_rows[:12]:
            store.put(r)
    rows = load_rows(path)
    assert len(rows) == 12
    assert best(rows, 100.0, "fid").winner.value == min(
        r["metrics"]["fid"]["value"] for r in study_rows[:12]
    )


def test_cli_frontier_and_best(tmp_path, study_rows, capsys):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(study_rows))
    assert main(["frontier", "--store", str(path), "--metric", "fid", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "fid" and out["direction"] == "min"
    assert len(out["curves"]) == 4 * 3 and out["frontier"] and out["verdicts"]

    assert main(["frontier", "--store", str(path), "--sampler", "ddim"]) == 0
    text = capsys.readouterr().out
    assert "frontier (best reachable" in text and "dpmpp" not in text

    assert main(["best", "--store", str(path), "--budget", "50", "--sampler", "ddim,ddpm"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("budget 50 (fid, lower is better; leading spacing): ")
    assert "runner-up from another width" in text
    assert main(["best", "--store", str(path), "--budget", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["winner"]["sampling_cost"] <= 5 and "summary" in res

    assert main(["best", "--store", str(path), "--budget", "5", "--metric", "nope"]) == 2
    assert "stored metrics: alignment, fid" in capsys.readouterr().err


# ----------------------------------------------------------------------------- protocol pieces

import numpy as np  # noqa: E402

from ldmscale.frontier import (  # noqa: E402
    equal_cost_verdicts,
    fixed_setting,
    frontier_summary,
    quality_table,
    replicate_spread,
)
from ldmscale.paired import RowSource  # noqa: E402


def _prow(model_hash, c, nc, steps, w, value, seed0=0, spacing="trailing", sampler="ddim", **kw):
    """A row of the new protocol: hash identity, spacing, seed set."""
    cid = f"{model_hash}-{sampler}-{spacing}-{steps}-{w}-{seed0}"
    r = _row(f"shapes-c{c}", c, nc, sampler, steps, w, value, metric="alignment", **kw)
    r.update(cell_id=cid, model_hash=model_hash, timestep_spacing=spacing, seed0=seed0)
    r.setdefault("n_images", 64)
    return r


def test_identity_by_hash_two_seeds_of_one_width_are_two_curves():
    rows = [
        _prow(h, 16, 0.5, s, 3.0, v, train_seed=seed)
        for h, seed, v in (("hA", 0, 0.4), ("hB", 1, 0.5))
        for s in (4, 8)
    ]
    rows += [_prow("hC", 32, 1.0, s, 3.0, 0.6) for s in (4, 8)]
    pts = optimal_guidance(rows, "alignment")
    cs = curves(pts)
    assert [k[0] for k in cs] == ["hA", "hB", "hC"]
    labels = sorted({p.label() for p in pts})
    assert labels == ["c=16 seed 0", "c=16 seed 1", "c=32"]
    # Same model name, same width, different weights: still two models.
    assert len({p.model for p in pts if p.c == 16}) == 1


def test_spacing_is_part_of_the_curve_and_verdicts_use_the_primary():
    rows = [_prow("h8", 8, 0.25, s, 3.0, 0.5 + s / 100) for s in (4, 8, 16)]
    rows += [_prow("h8", 8, 0.25, s, 3.0, 0.9, spacing="leading") for s in (4, 8)]
    pts = optimal_guidance(rows, "alignment")
    cs = curves(pts)
    assert set(cs) == {("h8", "ddim", "trailing"), ("h8", "ddim", "leading")}
    assert all(len({p.spacing for p in ps}) == 1 for ps in cs.values())
    # The leading control's (better) values never enter the trailing verdicts.
    r = best(rows, 100.0, "alignment")
    assert r.spacing == "trailing" and r.winner.spacing == "trailing"
    assert r.winner.value == pytest.approx(0.66)
    assert best(rows, 100.0, "alignment", spacing="leading").winner.value == 0.9
    s = frontier_summary(rows, "alignment")
    assert s["spacing"] == "trailing" and s["spacings"] == ["leading", "trailing"]
    assert [c["primary"] for c in s["curves"]].count(False) == 1


def test_fresh_seed_value_comes_from_the_other_seed_set():
    rows = [_prow("h8", 8, 0.25, 8, w, v) for w, v in ((2.0, 0.4), (3.0, 0.7), (4.0, 0.5))]
    # On the fresh seed set the winner's luck is gone: 0.55, not 0.7.
    rows += [_prow("h8", 8, 0.25, 8, w, v, seed0=1000) for w, v in ((2.0, 0.6), (3.0, 0.55))]
    (p,) = optimal_guidance(rows, "alignment", report_seed0=1000)
    assert p.guidance == 3.0 and p.value == 0.55 and p.fresh and p.seed0 == 1000
    assert p.select_cell_id.endswith("-0") and p.cell_id.endswith("-1000")
    (q,) = optimal_guidance(rows, "alignment")
    assert q.value == 0.7 and not q.fresh and "biased" in q.flags()
    # The optimum is chosen on seed0=0 even though w=2 looks better on the fresh set.
    rows.append(_prow("h8", 8, 0.25, 8, 4.0, 0.9, seed0=1000))
    assert optimal_guidance(rows, "alignment", report_seed0=1000)[0].guidance == 3.0
    with pytest.raises(FrontierError, match="stored seed sets: 0, 1000"):
        optimal_guidance(rows, "alignment", select_seed0=7)


def test_edge_flags():
    rows = [_prow("h8", 8, 0.25, 4, w, 1.0 - w / 10) for w in (1.0, 2.0, 3.0)]  # best at 1
    rows += [_prow("h8", 8, 0.25, 8, w, w / 10) for w in (1.0, 2.0, 3.0)]  # best at 3
    rows += [_prow("h8", 8, 0.25, 16, w, 0.5 - abs(w - 2) / 10) for w in (1.0, 2.0, 3.0)]
    rows += [_prow("h8", 8, 0.25, 32, 2.0, 0.5)]  # one-scale grid: not flagged
    edges = {p.steps: p.at_edge for p in optimal_guidance(rows, "alignment")}
    assert edges == {4: "low", 8: "high", 16: None, 32: None}
    s = frontier_summary(rows, "alignment")
    assert s["edges"] == {"low": 1, "high": 1, "total": 4}
    assert s["edge_text"].startswith("2 of 4 optima sit at the edge")


def _equal_cost_rows(gain: float) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Two widths, DDIM and DDPM; per-image alignment rows with shared prompt difficulty. The
    big width (cost 1/step) beats the small (cost 0.3/step) by ``gain`` per image."""
    rng = np.random.default_rng(0)
    base = rng.random(64)
    rows, cache = [], {}
    for sampler in ("ddim", "ddpm"):
        for h, c, nc, steps_list, shift in (
            ("hs", 8, 0.3, (2, 3, 6, 13), 0.0),
            ("hb", 32, 1.0, (1, 2, 4), gain),
        ):
            for s in steps_list:
                hits = np.clip(base + shift + rng.normal(0, 0.01, 64), 0, 1)
                v = float(hits.mean())
                r = _prow(h, c, nc, s, 3.0, v, sampler=sampler, half=0.3)
                rows.append(r)
                cache[r["cell_id"]] = hits
    return rows, cache


def test_equal_cost_verdict_per_sampler_is_paired_and_matches_costs():
    rows, cache = _equal_cost_rows(gain=0.05)
    source = RowSource(rows_fn=lambda r: {"alignment": cache[r["cell_id"]]})
    from ldmscale.frontier import Comparer

    pts = optimal_guidance(rows, "alignment")
    table = equal_cost_verdicts(pts, Comparer(rows, source, n_boot=100))
    assert set(table) == {"ddim", "ddpm"}
    ddim = table["ddim"]
    # c=32 at 1/2/4 steps (cost 1, 2, 4) vs c=8 at 3/6/13 steps (cost 0.9, 1.8, 3.9): nearest
    # cost not above the larger's.
    assert [(m.larger.steps, m.smaller.steps) for m in ddim] == [(1, 3), (2, 6), (4, 13)]
    assert [round(m.cost_ratio, 3) for m in ddim] == [0.9, 0.9, 0.975]
    # The marginal CIs (+-0.3) overlap, but the paired test sees the consistent gain.
    assert all(m.comparison.method == "paired" and m.winner == "c=32" for m in ddim)
    # Without rows the same data is a tie, by the weaker test.
    weak = equal_cost_verdicts(pts, Comparer(rows, None))["ddim"]
    assert all(m.winner is None and m.comparison.method == "ci_overlap" for m in weak)
    # Identical cells: ties even when paired.
    rows0, cache0 = _equal_cost_rows(gain=0.0)
    src0 = RowSource(rows_fn=lambda r: {"alignment": cache0[r["cell_id"]]})
    pts0 = optimal_guidance(rows0, "alignment")
    tie = equal_cost_verdicts(pts0, Comparer(rows0, src0, n_boot=100))["ddim"]
    assert all(m.winner is None for m in tie)


def test_best_runner_up_is_paired():
    rows, cache = _equal_cost_rows(gain=0.05)
    source = RowSource(rows_fn=lambda r: {"alignment": cache[r["cell_id"]]})
    r = best(rows, 4.0, "alignment", source=source, n_boot=100)
    assert r.winner.c == 32 and r.runner_up.point.c == 8 and r.decided
    assert r.runner_up.comparison.method == "paired" and r.runner_up.comparison.diff > 0
    assert "(paired, n=64)" in r.summary()


def test_final_rows_by_run_not_by_model_name():
    """Two seeds of one width share the model name; each run keeps its own last checkpoint."""
    rows = []
    for seed, last in ((0, 2000), (1, 1000)):
        for step in (500, 1000, 2000):
            if step > last:
                continue
            r = _prow(f"h{seed}-{step}", 8, 0.25, 8, 3.0, step / 1e4, train_seed=seed)
            r.update(train_step=step, model_path=f"/runs/c8-s{seed}/checkpoints/step-{step}")
            rows.append(r)
    kept = sorted((r["train_seed"], r["train_step"]) for r in final_rows(rows))
    assert kept == [(0, 2000), (1, 1000)]


def test_run_key_of_checkpoint_exports_and_final_model():
    """``<run>/evals/step-N``, ``<run>/checkpoints/x`` and ``<run>/model`` are one run."""
    keys = {
        run_key({"model": "m", "c": 8, "model_path": p})
        for p in ("/r/c8/evals/step-0000050", "/r/c8/checkpoints/step-100", "/r/c8/model")
    }
    assert keys == {("/r/c8", 8, None)}
    assert run_key({"model": "m", "c": 8, "model_path": "/r/c8-b/model"}) != keys.pop()


def test_quality_table_fixed_setting_and_spread():
    rows = []
    for h, c, seed, v in (("a", 8, 0, 0.3), ("b", 16, 0, 0.5), ("b2", 16, 1, 0.45)):
        for steps in (10, 50):
            for w in (2.0, 3.0, 4.0):
                val = v - abs(w - 3.0) / 10 + steps / 1000
                rows.append(_prow(h, c, 0.2 * c / 8, steps, w, val, train_seed=seed))
                rows.append(
                    _prow(h, c, 0.2 * c / 8, steps, w, val - 0.02, seed0=99, train_seed=seed)
                )
    rows.append(_prow("b", 16, 0.4, 100, 3.0, 0.9, train_seed=0))  # not stored for every model
    assert fixed_setting(rows, "alignment") == ("ddim", 50, 3.0)
    setting, recs = quality_table(rows, ["alignment"], report_seed0=99)
    assert setting == ("ddim", 50, 3.0)
    assert [r["label"] for r in recs] == ["c=8", "c=16 seed 0", "c=16 seed 1"]
    assert all(r["fresh"] for r in recs)
    assert recs[0]["points"]["alignment"].value == pytest.approx(0.3 + 0.05 - 0.02)
    (spread,) = replicate_spread(recs, "alignment")
    assert spread["width"] == "c=16" and spread["range"] == pytest.approx(0.05)


def test_cli_prints_floors_edges_and_fresh(tmp_path, capsys):
    rows = [_prow("h8", 8, 0.25, 4, w, 1.0 - w / 10) for w in (1.0, 2.0)]
    rows += [_prow("h32", 32, 1.0, 1, w, 0.5) for w in (1.0, 2.0)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    floors = {"alignment": {"real": {"value": 1.0, "lo": 0.98, "hi": 1.0, "n": 256},
                            "reconstruction": {"value": 0.95, "n": 256}}}  # fmt: skip
    (tmp_path / "floors.json").write_text(json.dumps(floors))
    assert main(["frontier", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "real images: 1 [0.98, 1] (n=256)" in out
    assert "autoencoder reconstructions: 0.95 (n=256)" in out
    assert "LOW EDGE" in out and "optima sit at the edge" in out
    assert "the same images (biased)" in out and "equal-cost verdict per sampler" in out
    (tmp_path / "floors.json").write_text("[1]")
    assert main(["frontier", "--store", str(path)]) == 2
