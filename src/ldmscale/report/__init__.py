"""The study report: one self-contained HTML page plus PNG figures beside it.

``build_report`` writes ``<out_dir>/index.html`` and ``<out_dir>/figures/*.png`` (referenced
by relative ``<img src>``; inline CSS; no external resources), atomically: everything is
written into a temporary folder that is renamed onto ``out_dir`` at the end. Figures and
tables follow the paper (Mei et al., 2024):

- two verdicts: the paper's (per sampler, which width is best at equal sampling cost, Fig.
  9/11) and the practical one (best configuration within each budget), both decided by a
  paired bootstrap over shared prompts and seeds (CI overlap, labelled weaker, without rows),
1. the model family table (trained widths; the paper-scale Table 1 when given) and Table 1's
   quality row (each width at one fixed setting, with the seed-to-seed spread of replicates),
2. quality vs training compute per width from scored checkpoints (Fig. 3; the training loss
   only when no checkpoint was scored, and the caption says so),
3. quality vs guidance per width and step count (Fig. 8),
4. optimal-guidance quality vs sampling cost per width, with CI error bars (Fig. 9), with
   other timestep spacings (a ``leading`` control) as separate dashed series,
5. the samplers compared (Fig. 11),
6. sample grids of different widths at equal sampling cost (Fig. 10).

Floors (real images, autoencoder reconstructions) are horizontal lines on the cost, guidance
and training figures and rows of the tables. Optima at the edge of their guidance grid are
marked and counted; optima not reported on a fresh seed set are said to be biased. Every
piece of user text (captions, prompts, model names) is HTML-escaped.

Modules: :mod:`~ldmscale.report.inputs` (training logs, sample grids),
:mod:`~ldmscale.report.analysis` (``Analysis``), :mod:`~ldmscale.report.plot` (matplotlib
helpers), :mod:`~ldmscale.report.figures` (Fig. 3, 8, 9, 11), :mod:`~ldmscale.report.verdicts`
(the two verdicts), :mod:`~ldmscale.report.tables`, :mod:`~ldmscale.report.markup` (HTML
pieces) and :mod:`~ldmscale.report.build` (``build_report``, the page section by section).
"""

from ldmscale.report.analysis import Analysis
from ldmscale.report.build import build_report
from ldmscale.report.figures import fig_cost, fig_guidance, fig_samplers, fig_training
from ldmscale.report.inputs import (
    ReportError,
    SampleGrid,
    TrainingCurve,
    load_sample_grids,
    read_training_log,
)
from ldmscale.report.plot import DPI, FLOOR_STYLE
from ldmscale.report.tables import (
    floors_html,
    frontier_html,
    optima_html,
    quality_html,
    trained_widths,
)
from ldmscale.report.verdicts import equal_cost_html, verdict_html

__all__ = [
    "DPI",
    "FLOOR_STYLE",
    "Analysis",
    "ReportError",
    "SampleGrid",
    "TrainingCurve",
    "build_report",
    "equal_cost_html",
    "fig_cost",
    "fig_guidance",
    "fig_samplers",
    "fig_training",
    "floors_html",
    "frontier_html",
    "load_sample_grids",
    "optima_html",
    "quality_html",
    "read_training_log",
    "trained_widths",
    "verdict_html",
]
