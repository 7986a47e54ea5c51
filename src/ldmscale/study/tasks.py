"""The study's tasks beyond text-to-image: distillation, super-resolution, DreamBooth.

A task builds on the text-to-image study's trained widths (its parents) and adds stages of its
own after them, plus sections of the report. ``StudyConfig.tasks`` names the tasks to run and
``StudyConfig.task_options[name]`` holds each one's options (a plain table its module checks).
``ldmscale study --task sr --preset tiny`` runs the ``tiny`` study's stages the task needs
(``Task.needs``, reused when done) and then the task's own.

A task is one module that defines ``TASK = Task(...)`` and one line in :data:`TASK_MODULES`
(imported only when the task is used, so a task's dependencies load with it alone).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmscale.config import ConfigError

if TYPE_CHECKING:
    from ldmscale.study.config import StudyConfig
    from ldmscale.study.context import StudyRun
    from ldmscale.study.stages import Stage

#: task name -> the module that defines its ``TASK``.
TASK_MODULES: dict[str, str] = {
    "distill": "ldmscale.study.task_distill",
    "dreambooth": "ldmscale.study.task_dreambooth",
    "sr": "ldmscale.study.task_sr",
}


@dataclass(frozen=True)
class Task:
    """One study task.

    name: its ``--task`` name. summary: one line for ``--help``. needs: the text-to-image
    stages it builds on (run first when ``--stages`` is not given, e.g. ``("data",
    "autoencoder", "train")``). stages(cfg): its own stages in run order (names must not clash
    with the text-to-image ones). report(run, figures_dir): the HTML sections it adds to the
    study report (figures written under ``figures_dir``), or [] when it has nothing yet.
    default_options(preset): its options for a base preset name (``tiny``, ``trend``, ...).
    dry_run(cfg): lines for ``ldmscale study --dry-run`` (its runs, cells, UNet evaluations).
    """

    name: str
    summary: str
    needs: tuple[str, ...]
    stages: Callable[[StudyConfig], list[Stage]]
    report: Callable[[StudyRun, Path], list[str]] | None = None
    default_options: Callable[[str], dict[str, Any]] = lambda preset: {}
    dry_run: Callable[[StudyConfig], list[str]] | None = None

    def stage_names(self, cfg: StudyConfig) -> tuple[str, ...]:
        """Its stages' ``--stages`` names, in order, without repeats."""
        return tuple(dict.fromkeys(s.name for s in self.stages(cfg)))

    def options(self, cfg: StudyConfig) -> dict[str, Any]:
        """Its options in ``cfg`` (the preset's defaults when the config has none)."""
        return dict(cfg.task_options.get(self.name) or self.default_options(cfg.preset))


def check_task_names(names: Sequence[str]) -> None:
    """Refuse a task name no module defines, naming the known ones."""
    unknown = sorted(set(names) - set(TASK_MODULES))
    if unknown:
        raise ConfigError(
            f"unknown study task(s) {unknown}; tasks are {sorted(TASK_MODULES) or 'none yet'} "
            "(text-to-image is the study itself: leave tasks empty)"
        )


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name``."""
    check_task_names([name])
    return importlib.import_module(TASK_MODULES[name]).TASK


def tasks_of(cfg: StudyConfig) -> list[Task]:
    """The tasks ``cfg`` runs, in its order."""
    return [get_task(name) for name in cfg.tasks]
