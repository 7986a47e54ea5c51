"""What the stages of one study run share: the config, the output so far, and the sweep's plans.

The plans are built once per run and only when a stage needs them (after training: they
describe the trained models). The study's cells are the grid (``sweep``), each optimum again
on fresh seeds (``confirm``) and the kept checkpoints at one setting (``checkpoints``); the
confirm stage and the report read only the store rows of these cells, so results stored under
an earlier grid, metric set or N stay in ``results.sqlite`` without entering this study's
selection, figures or verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale.study.config import StudyConfig
from ldmscale.sweep import Plan, SweepConfig

#: The fresh seed set the optimal-guidance cells are re-evaluated on (``confirm`` stage), so
#: the value reported at an optimum is not chosen and measured on the same images.
CONFIRM_SEED0 = 10_000


@dataclass
class StudyResult:
    """Where a study wrote everything, and how long each stage took (seconds)."""

    out_dir: Path
    data: Path
    autoencoder: Path
    runs: list[Path]
    samples: list[Path]
    store: Path | None
    report: Path | None
    timings: dict[str, float]
    verdict: str | None = None


@dataclass
class StudyRun:
    """One run of a study: ``cfg``, whether bars are drawn, the log, and what it produced."""

    cfg: StudyConfig
    progress: bool
    log: Callable[[str], None]
    result: StudyResult
    _cache: dict[str, Any] = field(default_factory=dict)

    def _cached(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def sweep_cfg(self) -> SweepConfig:
        """The study's sweep (its models, dataset, store and row cache filled in)."""
        return self._cached("sweep_cfg", self.cfg.sweep_config)

    def stored_ids(self) -> set[str]:
        """The cell ids in the results store now (empty if there is no store yet)."""
        from ldmscale.store import ResultsStore

        if not Path(self.sweep_cfg.store).is_file():
            return set()
        with ResultsStore(self.sweep_cfg.store) as store:
            return store.cell_ids()

    def rows(self, plans: list[Plan | None]) -> list[dict]:
        """The store's rows of the cells of ``plans``, in store order."""
        from ldmscale.store import ResultsStore

        ids = {c.cell_id for p in plans if p is not None for c in p.cells}
        with ResultsStore(self.sweep_cfg.store) as store:
            return [r for r in store.rows() if r["cell_id"] in ids]

    def sweep_plan(self) -> Plan:
        """The grid: every width x sampler x spacing x steps x guidance."""
        from ldmscale.sweep import plan_sweep

        return self._cached("sweep", lambda: plan_sweep(self.sweep_cfg))

    def confirm_plan(self) -> Plan | None:
        """Each (width, sampler, spacing, steps) group's optimal-guidance cell of the grid, on
        the fresh seed set :data:`CONFIRM_SEED0` (same prompts); None if the grid has no
        optimum. Built from the stored grid rows, so only once the sweep is complete."""
        return self._cached("confirm", self._confirm_plan)

    def _confirm_plan(self) -> Plan | None:
        from ldmscale.frontier import default_metric, optimal_guidance
        from ldmscale.sweep import plan_cells

        rows = self.rows([self.sweep_plan()])
        metric = self.cfg.primary_metric or default_metric(rows)
        seed0 = self.sweep_cfg.seed0
        by_id = {r["cell_id"]: r for r in rows}
        settings = []
        for spacing in sorted({str(r.get("timestep_spacing") or "leading") for r in rows}):
            for p in optimal_guidance(rows, metric, spacing=spacing, select_seed0=seed0):
                row = by_id.get(p.select_cell_id or p.cell_id or "")
                if row is not None:
                    settings.append((row["model_path"], p.sampler, p.steps, p.guidance, spacing))
        if not settings:
            return None
        return plan_cells(self.sweep_cfg.replace(seed0=CONFIRM_SEED0), settings)

    def checkpoint_plan(self) -> Plan | None:
        """Every kept checkpoint export and final model at ``checkpoint_sampler``; None if
        there is none."""
        from ldmscale.sweep import plan_cells

        def build() -> Plan | None:
            settings = checkpoint_settings(self.cfg)
            return plan_cells(self.sweep_cfg, settings) if settings else None

        return self._cached("checkpoints", build)

    def study_rows(self) -> list[dict]:
        """The store's rows of this study's cells: the grid, the confirmations, the checkpoints."""
        plans = [self.sweep_plan(), self.checkpoint_plan()]
        stored = self.stored_ids()
        if any(c.cell_id in stored for c in self.sweep_plan().cells):  # else no optimum yet
            plans.append(self.confirm_plan())
        return self.rows(plans)


def checkpoint_settings(cfg: StudyConfig) -> list[tuple[str, str, int, float, str]]:
    """The ``checkpoints`` stage's cells: every kept checkpoint export ``<run>/evals/step-N``
    of every width, and each final model, at ``checkpoint_sampler`` (one fixed setting)."""
    from ldmscale.modelfolder import MODEL_FILE
    from ldmscale.sweep import DEFAULT_SPACING

    s = cfg.checkpoint_sampler
    spacing = s.timestep_spacing or DEFAULT_SPACING
    out = []
    for c in cfg.widths:
        evals = cfg.run_dir(c) / "evals"
        folders = sorted(evals.glob("step-*")) if evals.is_dir() else []
        for folder in [*folders, cfg.run_dir(c) / "model"]:
            if (folder / MODEL_FILE).is_file():
                out.append((str(folder), s.name, s.steps, s.guidance, spacing))
    return out
