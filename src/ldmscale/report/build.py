"""``build_report``: the report's page, section by section, written atomically."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ldmscale.frontier import (
    Comparer,
    default_metric,
    default_report_seed0,
    final_rows,
    model_key,
    primary_spacing,
    spacing_of,
)
from ldmscale.io import atomic_path
from ldmscale.metrics.registry import get_metric
from ldmscale.paired import RowSource
from ldmscale.report.analysis import Analysis, _direction_word, _main_sampler
from ldmscale.report.figures import fig_cost, fig_guidance, fig_samplers, fig_training
from ldmscale.report.inputs import ReportError, SampleGrid, TrainingCurve, read_training_log
from ldmscale.report.markup import _esc, _figure, _page, _table
from ldmscale.report.tables import (
    floors_html,
    frontier_html,
    optima_html,
    quality_html,
    trained_widths,
)
from ldmscale.report.verdicts import equal_cost_html, verdict_html


def build_report(
    rows: Sequence[dict],
    runs: Sequence[str | Path] = (),
    sample_grids: Sequence[SampleGrid | str | Path] = (),
    out_dir: str | Path = "report",
    family_table: Sequence[dict] | None = None,
    title: str = "ldmscale: model size vs sampling cost",
    primary_metric: str | None = None,
    select_by: str | None = None,
    metric_note: str | None = None,
    floors: dict | None = None,
    spacing: str | None = None,
    select_seed0: int = 0,
    report_seed0: int | str | None = "auto",
    source: RowSource | None = None,
    quality_setting: tuple[str, int, float] | None = None,
    n_boot: int = 200,
    extra: Sequence[Callable[[Path], list[str]]] = (),
) -> Path:
    """Write the HTML report and its figures to ``out_dir`` (replaced atomically).

    rows: results-store rows (``store.rows()``). runs: training run folders (Fig. 3's loss
    fallback and the trained-widths table). sample_grids: grid images for Fig. 10.
    family_table: optional paper-scale Table 1 records. primary_metric: the metric of the
    figures and verdicts (default: the one stored on most rows); select_by: the metric that
    picks the optimal guidance (default: primary_metric). floors: ``{metric: {"real" |
    "reconstruction": {value, lo, hi, n}}}`` (``floors.json``). spacing: the verdicts'
    timestep spacing (default: the most stored). select_seed0 / report_seed0: the seed sets
    the guidance is chosen / reported on (``"auto"``: the other stored set; None: the same
    images). source: where per-image rows come from for paired tests (default: the row
    cache each row's provenance names). quality_setting: Table 1's (sampler, steps, guidance).
    extra: more sections (a study task's, :mod:`ldmscale.study.tasks`), each called with the
    figures folder and returning HTML sections; with no rows the page has only these.
    Returns the path of ``index.html``.
    """
    rows = list(rows)
    if not rows and extra:
        return _extra_only(extra, Path(out_dir), title)
    if not rows:
        raise ReportError("no results rows: run the sweep first (`ldmscale sweep`)")
    metric = primary_metric or default_metric(rows)
    info = get_metric(metric)  # fails early on a metric the registry does not know
    curves_ = [read_training_log(r) for r in runs]
    grids = _sample_grids(sample_grids)
    out_dir = Path(out_dir)
    finals = final_rows(rows)
    if report_seed0 == "auto":
        report_seed0 = default_report_seed0(rows, select_seed0)
    a = Analysis(
        metric,
        select_by,
        spacing or primary_spacing(finals),
        select_seed0,
        report_seed0,
        floors,
        Comparer(rows, source if source is not None else RowSource(), n_boot),
    )
    sampler = _main_sampler([r for r in finals if spacing_of(r) == a.spacing] or finals)

    with atomic_path(out_dir) as tmp:
        figs = tmp / "figures"
        figs.mkdir(parents=True)
        parts = [
            *_head_sections(finals, a, metric_note or info.note),
            *_verdict_sections(rows, a),
            *_family_sections(rows, finals, curves_, a, family_table, quality_setting),
            *_figure_sections(rows, curves_, a, sampler, figs),
            *_samples_sections(grids, figs),
            *(section for make in extra for section in make(figs)),
        ]
        (tmp / "index.html").write_text(_page(title, parts), encoding="utf-8")
    return out_dir / "index.html"


def _extra_only(extra: Sequence[Callable[[Path], list[str]]], out_dir: Path, title: str) -> Path:
    """A page of the ``extra`` sections alone (a task run without the text-to-image sweep)."""
    with atomic_path(out_dir) as tmp:
        figs = tmp / "figures"
        figs.mkdir(parents=True)
        parts = [section for make in extra for section in make(figs)]
        (tmp / "index.html").write_text(_page(title, parts), encoding="utf-8")
    return out_dir / "index.html"


def _sample_grids(sample_grids: Sequence[SampleGrid | str | Path]) -> list[SampleGrid]:
    """The grids as :class:`SampleGrid` (a bare path: caption = file name); each must exist."""
    grids = [
        g if isinstance(g, SampleGrid) else SampleGrid(Path(g), Path(g).stem) for g in sample_grids
    ]
    for g in grids:
        if not Path(g.path).is_file():
            raise FileNotFoundError(f"sample grid image not found: {g.path}")
    return grids


def _head_sections(finals: Sequence[dict], a: Analysis, note: str) -> list[str]:
    """What the report reads and how: the metric, the seed sets, the spacing, the counts; then
    the floors."""
    metric = a.metric
    spacings = sorted({spacing_of(r) for r in finals})
    seeds = (
        f"chosen on seed set {a.select_seed0}, reported on seed set {a.report_seed0} (fresh)"
        if a.report_seed0 is not None
        else f"chosen and reported on seed set {a.select_seed0} (no fresh seed set: biased)"
    )
    intro = (
        f"<p>Primary metric: <b>{_esc(metric)}</b> ({_esc(_direction_word(metric))}): "
        f"{_esc(note)}. Optimal guidance chosen by {_esc(a.select_by or metric)}, {_esc(seeds)}. "
        f"Verdicts at <b>{_esc(a.spacing)}</b> timestep spacing"
        + (
            f" (also stored: {_esc(', '.join(s for s in spacings if s != a.spacing))}, shown as "
            f"separate series)"
            if len(spacings) > 1
            else ""
        )
        + f". {len(finals)} result cells over {len({model_key(r) for r in finals})} models.</p>"
    )
    return [intro, "<h3>Floors (best possible values)</h3>", floors_html(a)]


def _verdict_sections(rows: Sequence[dict], a: Analysis) -> list[str]:
    """Verdict 1 (the paper's, at equal cost per sampler), verdict 2 (the best within each
    budget), and the optima behind them."""
    return [
        "<h2 id='verdict-paper'>Verdict 1: widths at equal sampling cost, per sampler (paper Fig. 9/11)</h2>",
        equal_cost_html(rows, a),
        "<h2 id='verdict'>Verdict 2: the best configuration within each budget</h2>",
        verdict_html(rows, a.metric, a.select_by, a),
        "<h3>Optimal guidance: edges and seed sets</h3>",
        optima_html(rows, a),
    ]


def _family_sections(
    rows: Sequence[dict],
    finals: Sequence[dict],
    curves_: Sequence[TrainingCurve],
    a: Analysis,
    family_table: Sequence[dict] | None,
    quality_setting: tuple[str, int, float] | None,
) -> list[str]:
    """Section 1: the trained widths, Table 1's quality row, the paper-scale family."""
    parts = [
        "<h2 id='family'>1. Model family</h2><h3>Trained widths</h3>",
        _table(trained_widths(finals, curves_)),
        "<h3>Quality at one fixed setting (Table 1's quality row)</h3>",
        quality_html(rows, a, quality_setting),
    ]
    if family_table:
        parts.append("<h3>Paper-scale family (Table 1 of the paper, computed)</h3>")
        parts.append(_table(list(family_table)))
    return parts


def _figure_sections(
    rows: Sequence[dict],
    curves_: Sequence[TrainingCurve],
    a: Analysis,
    sampler: str,
    figs: Path,
) -> list[str]:
    """Sections 2-5: Fig. 3, Fig. 8 and Fig. 9 at the main sampler, the frontier table, Fig. 11."""
    metric = a.metric
    no_rows = f"Not available: no {metric} results for the {sampler} sampler."
    return [
        *_figure_section(
            "<h2 id='training'>2. Quality vs training compute (Fig. 3)</h2>",
            fig_training(rows, curves_, metric, figs / "fig3_training.png", a),
            "Not available: no checkpoint evaluations in the results and no training logs given.",
        ),
        *_figure_section(
            "<h2 id='guidance'>3. Quality vs guidance (Fig. 8)</h2>",
            fig_guidance(rows, metric, sampler, figs / "fig8_guidance.png", a),
            no_rows,
        ),
        *_figure_section(
            "<h2 id='cost'>4. Quality vs sampling cost (Fig. 9)</h2>",
            fig_cost(rows, metric, sampler, figs / "fig9_cost.png", a.select_by, a),
            no_rows,
        ),
        f"<h3>Frontier over all samplers ({_esc(a.spacing)} spacing)</h3>",
        frontier_html(rows, a),
        *_figure_section(
            "<h2 id='samplers'>5. Samplers compared (Fig. 11)</h2>",
            fig_samplers(rows, metric, figs / "fig11_samplers.png", a.select_by, a),
            "Not available: fewer than two samplers in the results.",
        ),
    ]


def _figure_section(heading: str, made: tuple[Path, str] | None, missing: str) -> list[str]:
    """A figure's heading and the figure (``made``: its path and caption), or why it is missing."""
    if made is None:
        return [heading, f"<p class='note'>{_esc(missing)}</p>"]
    p, cap = made
    return [heading, _figure(f"figures/{p.name}", cap, p.stem)]


def _samples_sections(grids: Sequence[SampleGrid], figs: Path) -> list[str]:
    """Section 6: the sample grids, copied beside the figures, cheapest first (Fig. 10)."""
    parts = ["<h2 id='samples'>6. Samples at equal sampling cost (Fig. 10)</h2>"]
    if not grids:
        parts.append("<p class='note'>No sample grids were given.</p>")
        return parts
    parts.append("<div class='grids'>")
    for i, g in enumerate(sorted(grids, key=lambda g: (g.sampling_cost or 0.0, g.model or ""))):
        name = f"fig10_samples_{i:02d}.png"
        shutil.copyfile(g.path, figs / name)
        head = g.model or ""
        if g.sampling_cost is not None:
            head += f" (sampling cost {g.sampling_cost:.3g})"
        cap = f"{head}: {g.caption}" if head else g.caption
        parts.append(_figure(f"figures/{name}", cap, g.model or Path(g.path).stem))
    parts.append("</div>")
    parts.append(
        "<p class='note'>Grids of different widths drawn at (about) the same sampling "
        "cost, so a smaller model gets more steps (paper Fig. 10).</p>"
    )
    return parts
