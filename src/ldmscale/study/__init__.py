"""The whole study as one resumable pipeline (``ldmscale study``).

data -> autoencoder -> caches -> train every width -> sample grids at equal sampling cost
-> sweep (models x samplers x steps x guidance) -> confirm the optima on fresh seeds
-> score the kept checkpoints -> floors -> report.

The study is a list of stages (:mod:`~ldmscale.study.stages`), each keyed by exactly the
inputs and settings it depends on. Every stage writes into ``<out_dir>`` and is skipped when
its output is already complete, and the long stages (training, the sweep) resume from where a
killed run stopped, so running the same command again finishes an interrupted study. A new
grid, metric set or N reuses the trained autoencoder and models; a changed autoencoder or
training config is refused for the folders made with the old one (:mod:`~ldmscale.study.record`).

Modules, one concept each:

- :mod:`~ldmscale.study.config`: :class:`StudyConfig` and where each stage writes;
- :mod:`~ldmscale.study.presets`: the ``tiny``, ``trend``, ``small`` and ``paper`` presets;
- :mod:`~ldmscale.study.data`: the data's checks and the metrics chosen for it (``--data``);
- :mod:`~ldmscale.study.stages`: the stages (name, key, is_done, run) in order;
- :mod:`~ldmscale.study.context`: what the stages of one run share (the sweep's plans);
- :mod:`~ldmscale.study.record`: ``stages.json``, the check that refuses mixed configs;
- :mod:`~ldmscale.study.run`: :func:`run_study`, the preflight and the loop;
- :mod:`~ldmscale.study.report`: the report stage;
- :mod:`~ldmscale.study.dryrun`: :func:`dry_run`, the plan and its cost.
"""

from ldmscale.study.config import StudyConfig
from ldmscale.study.context import CONFIRM_SEED0, StudyResult, checkpoint_settings
from ldmscale.study.data import StudyDataError, check_study_metrics, metrics_for_data
from ldmscale.study.dryrun import dry_run
from ldmscale.study.presets import PRESETS, preset
from ldmscale.study.record import StageMismatchError
from ldmscale.study.run import run_study
from ldmscale.study.stages import STAGES, Stage, build_stages

__all__ = [
    "CONFIRM_SEED0",
    "PRESETS",
    "STAGES",
    "Stage",
    "StageMismatchError",
    "StudyConfig",
    "StudyDataError",
    "StudyResult",
    "build_stages",
    "check_study_metrics",
    "checkpoint_settings",
    "dry_run",
    "metrics_for_data",
    "preset",
    "run_study",
]
