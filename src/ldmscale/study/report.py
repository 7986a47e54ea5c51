"""The study's report stage: the HTML report and the verdict from this study's cells.

The rows are the store's rows of the study's cells only (:meth:`StudyRun.study_rows`: the
grid, the fresh-seed confirmations, the checkpoints), so cells stored under an earlier grid,
metric set or N do not enter it. The primary metric's note comes from the metric registry.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from ldmscale.io import atomic_write_json
from ldmscale.study.context import CONFIRM_SEED0, StudyRun


def study_report(run: StudyRun) -> tuple[Path, str]:
    """Write ``<out_dir>/report/`` and return its path and the budget verdict (one line per
    span of sampling cost)."""
    from ldmscale.frontier import Comparer, budget_verdicts, default_metric, optimal_guidance
    from ldmscale.paired import RowSource
    from ldmscale.report import build_report, load_sample_grids
    from ldmscale.study.tasks import tasks_of

    cfg = run.cfg
    rows = run.study_rows() if Path(run.sweep_cfg.store).is_file() else []
    grids = []
    for folder in run.result.samples or [cfg.root / "samples"]:
        if folder.exists():
            grids += load_sample_grids(folder)
    # Paired bootstrap over the shared image indices, from the study's per-image rows; one
    # source for the report and the verdict, so each cell's rows are read once.
    source = RowSource(run.sweep_cfg.rows_dir)
    floors_path = cfg.root / "floors.json"
    floors = None
    if floors_path.is_file():
        from ldmscale.frontier import load_floors

        floors = load_floors(floors_path)
    path = build_report(
        rows,
        floors=floors,
        runs=[cfg.run_dir(c) for c in cfg.widths],
        sample_grids=grids,
        out_dir=cfg.root / "report",
        family_table=paper_table(cfg.root, run.progress) if cfg.paper_table else None,
        title=f"ldmscale study ({cfg.preset})",
        primary_metric=cfg.primary_metric,
        source=source,
        extra=[partial(task.report, run) for task in tasks_of(cfg) if task.report],
    )
    if not rows:  # a task run without the text-to-image sweep: no verdict of its own
        return path, ""
    metric = cfg.primary_metric or default_metric(rows)
    fresh = CONFIRM_SEED0 if any(int(r.get("seed0") or 0) == CONFIRM_SEED0 for r in rows) else None
    points = optimal_guidance(rows, metric, report_seed0=fresh)
    spans = budget_verdicts(points, comparer=Comparer(rows, source))
    return path, "\n".join(span.text() for span in spans)


def paper_table(root: Path, progress: bool = False) -> list[dict]:
    """The paper-scale Table 1 (counted once, ~30 s, then reused from ``family_table.json``)."""
    from ldmscale.family import family_table

    path = root / "family_table.json"
    if path.is_file():
        return json.loads(path.read_text())
    table = family_table(progress=None if progress else False)  # None: a bar on a terminal
    atomic_write_json(path, table)
    return table
