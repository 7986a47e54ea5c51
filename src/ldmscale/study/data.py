"""The study's data and its metrics, checked (and the metrics chosen) before any training.

The data (:func:`check_study_data`): the generated ``shapes``, or ``StudyConfig.data``, an
image folder or a COCO root (docs/data.md) with a ``train`` split (training; the floors' real
held-out images) and a ``validation`` split (prompts, reference images, sample grids).

What each metric needs is the registry's (:mod:`ldmscale.metrics.registry`, ``Metric.needs``):
``reference`` (the data's validation split, which every study has), ``prompts`` (captions,
which every dataset has), ``shapes_probe`` (every record carries shapes attributes: the
generated ``shapes``, or a folder written like it) and ``clip_model`` (a local CLIP folder).

The choice (:func:`metrics_for_data`, what ``ldmscale study --data`` does):

- metrics asked for by name (``--metrics``) are used as asked;
- otherwise the config's metrics are kept when the data supports every one of them (the
  ``tiny`` and ``trend`` presets' FD-probe + alignment on shapes-style data, the ``paper``
  preset's FID + CLIP score on COCO with a CLIP folder);
- otherwise ``fd_effnet``: Fréchet distance on EfficientNet-Lite0 features, which needs
  nothing but real images and runs ~22 images/s on 2 CPU cores (Inception FID runs ~10/s, so
  it is used only on request: ``--metrics fid``);
- ``clip_score`` is added when a CLIP folder is given (``--clip-model``).

The primary metric (figures, verdict) stays the config's if it is among the chosen metrics,
else it is the first chosen Fréchet distance, else the first chosen metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ldmscale.config import ConfigError
from ldmscale.metrics.registry import check_metrics, get_metric
from ldmscale.study.config import StudyConfig

#: The default metric of data without shapes attributes.
GENERAL_DEFAULT = ("fd_effnet",)


class StudyDataError(ConfigError):
    """Metrics the study's data cannot support; the message names them and the fix."""


def check_study_data(cfg: StudyConfig) -> bool:
    """Whether the study's data carries shapes attributes, after checking it from its listings
    (no image decoded): ``cfg.data`` must be an image folder or a COCO root with a ``train``
    and a ``validation`` split, and, for data without shapes attributes, ``validation`` must hold at
    least ``sweep.n_images`` pairs (the prompts, and the images the real-image floor scores). A ``DataError`` names the problem and the
    fix. The generated ``shapes`` (``data`` None) always has the attributes."""
    if not cfg.data:
        return True
    from ldmscale.data import DataError
    from ldmscale.data.source import describe_source

    info = describe_source(cfg.data)
    missing = [s for s in ("train", "validation") if not info.counts.get(s)]
    if missing:
        raise DataError(
            f"{cfg.data} ({info.kind}, splits {sorted(info.counts) or 'none'}) has no "
            f"{' and no '.join(missing)} split: the study trains on 'train' and takes its prompts "
            "and reference images from 'validation'. Give an image folder with "
            "train/metadata.jsonl and validation/metadata.jsonl, or a COCO root with "
            "annotations/captions_train*.json and captions_val*.json (docs/data.md)"
        )
    n = cfg.sweep.n_images
    if not info.shapes_attributes and info.counts["validation"] < n:
        raise DataError(
            f"{cfg.data}: the validation split has {info.counts['validation']} images, fewer "
            f"than the sweep's n_images={n} (the prompts would repeat, and the real-image floor "
            "scores the validation images of the prompts); add images or lower sweep.n_images"
        )
    return info.shapes_attributes


def unsupported(metrics: Sequence[str], shapes: bool, clip_model: str | None) -> dict[str, str]:
    """``{metric: why}`` for each of ``metrics`` the data cannot support (unknown names raise
    the registry's ``UnknownMetricError``)."""
    out = {}
    for m in check_metrics(metrics):
        if "shapes_probe" in m.needs and not shapes:
            out[m.name] = (
                "needs the shapes probe, which trains on shapes attributes this data does not carry"
            )
        elif "clip_model" in m.needs and not clip_model:
            out[m.name] = "needs a local CLIP folder (--clip-model PATH, sweep.clip_model)"
        elif "clip_model" in m.needs and not (Path(clip_model) / "config.json").is_file():
            out[m.name] = f"clip_model {clip_model} is not a CLIP folder (no config.json)"
    return out


def primary_for(metrics: Sequence[str], current: str | None) -> str:
    """The primary metric among ``metrics``: ``current`` if listed, else the first Fréchet
    distance (a feature-distance metric), else the first."""
    if current in metrics:
        return str(current)
    distances = [m for m in metrics if get_metric(m).kind == "feature_distance"]
    return (distances or list(metrics))[0]


def metrics_for_data(
    cfg: StudyConfig, metrics: Sequence[str] | None = None, clip_model: str | None = None
) -> tuple[StudyConfig, str]:
    """``cfg`` with the sweep's metrics and primary metric chosen for its data (module
    docstring), and one line saying what was chosen and why. Raises :class:`StudyDataError`
    when asked-for metrics cannot be computed on the data."""
    sweep = cfg.sweep if clip_model is None else cfg.sweep.replace(clip_model=clip_model)
    shapes = check_study_data(cfg)
    kind = "shapes attributes" if shapes else "no shapes attributes"
    if metrics:
        chosen, why = tuple(dict.fromkeys(metrics)), "as asked"
    elif not unsupported(sweep.metrics, shapes, sweep.clip_model):
        chosen, why = tuple(sweep.metrics), "the config's, all supported by the data"
    else:
        chosen = GENERAL_DEFAULT
        why = f"the default for data without shapes attributes ({', '.join(sweep.metrics)} not)"
    if sweep.clip_model and "clip_score" not in chosen:
        chosen, why = (*chosen, "clip_score"), why + "; clip_score for the CLIP folder given"
    out = cfg.replace(
        sweep=sweep.replace(metrics=chosen),
        primary_metric=primary_for(chosen, cfg.primary_metric),
    )
    check_study_metrics(out, shapes)
    source = cfg.data or "the generated shapes"
    line = (
        f"metrics for {source} ({kind}): {', '.join(chosen)} ({why}); primary {out.primary_metric}"
    )
    return out, line


def check_study_metrics(cfg: StudyConfig, shapes: bool | None = None) -> None:
    """Raise :class:`StudyDataError` if the study's data cannot support one of its sweep's
    metrics or its primary metric is not one of them (checked before any training)."""
    shapes = check_study_data(cfg) if shapes is None else shapes
    bad = unsupported(cfg.sweep.metrics, shapes, cfg.sweep.clip_model)
    if bad:
        why = "; ".join(f"{name} {reason}" for name, reason in bad.items())
        ok = [m for m in cfg.sweep.metrics if m not in bad] or list(GENERAL_DEFAULT)
        raise StudyDataError(
            f"the study's data ({cfg.data or 'shapes'}) cannot support metric(s) {sorted(bad)}: "
            f"{why}. Choose metrics the data supports, e.g. --metrics {','.join(ok)} (or set "
            "sweep.metrics); fd_effnet and fid need only real images"
        )
    if cfg.primary_metric is not None and cfg.primary_metric not in cfg.sweep.metrics:
        raise StudyDataError(
            f"primary_metric {cfg.primary_metric!r} is not among the sweep's metrics "
            f"{list(cfg.sweep.metrics)}; set primary_metric to one of them"
        )
