"""Scoring images under a sweep's metric protocol: per-image rows, statistics, bootstrap CIs.

A *protocol* is the dict a sweep stores with every cell (``ldmscale.sweep.metric_protocol``):
``{"metrics": [names], "bootstrap": B, "ci_level": L, "reference": {"dataset", "split",
"resolution", ...}, "probe": {"steps": S}, "clip_model": path | None, ...}``. The metrics are
the registry's (:mod:`ldmscale.metrics.registry`), which says for each one what it needs and
how its statistic is built; this module builds those things once per process and scores:

- :func:`metric_rows`: per-image rows of each metric (features ``[N, D]`` for a feature
  distance, values ``[N]`` for a per-image score), float64, and each network's fingerprint;
- :func:`metric_statistic`: a metric's value from rows (Fréchet distance or KID to the
  protocol's reference, or the mean);
- :func:`score_rows`: each metric's value with its percentile bootstrap CI over the images
  (reference held fixed);
- :func:`prepare_metrics`: build the probe and the reference statistics once, in the driver,
  before parallel workers need them (they then find them in the disk cache).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, overload

import numpy as np

from ldmscale.metrics.common import MetricsError
from ldmscale.metrics.registry import Metric, build_network, check_metrics, get_metric

#: Per-process caches: built networks and reference sets, and Fréchet statistics per reference.
_CACHE: dict[tuple, Any] = {}
_FRECHET: dict[tuple[str, int], Callable[[np.ndarray], float]] = {}


def prepare_metrics(protocol: dict[str, Any], progress: bool = False) -> None:
    """Build what the protocol's metrics need once, in the driver (the probe, reference
    statistics, the CLIP folder check), so that parallel workers find it in the disk cache
    instead of each building it. Unknown names and missing inputs fail here, before any cell."""
    for metric in check_metrics(protocol.get("metrics", [])):
        if metric.kind == "feature_distance":
            reference_set(metric.name, protocol, progress=progress)
        elif metric.network == "probe":
            protocol_probe(protocol)
        elif metric.network == "clip":
            clip_model_path(protocol)


def metric_rows(
    images: np.ndarray, prompts: list[str], protocol: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-image rows of each of the protocol's metrics on uint8 images ``[N, H, W, 3]`` with
    their prompts (features ``[N, D]`` or values ``[N]``, float64), and the fingerprint of the
    network behind each."""
    from ldmscale.metrics.common import extract_features

    rows: dict[str, np.ndarray] = {}
    fingerprints: dict[str, str] = {}
    for metric in check_metrics(protocol["metrics"]):
        name = metric.name
        if "ground_truth" in metric.needs:
            raise MetricsError(
                f"metric {name!r} scores an image against its own ground truth: it is a "
                "super-resolution metric (evaluate SR models with ldmscale.sr_eval), not one "
                "for generated images"
            )
        if metric.kind == "feature_distance":
            extractor, _ = reference_set(name, protocol)
            fingerprints[name] = extractor.fingerprint()
            rows[name] = extract_features(images, extractor)
        elif metric.network == "probe":
            from ldmscale.metrics.alignment import text_alignment

            probe = protocol_probe(protocol)
            fingerprints[name] = probe.fingerprint()
            rows[name] = text_alignment(images, probe, captions=prompts).hits.astype(np.float64)
        elif metric.network == "clip":
            from ldmscale.metrics.clip_score import clip_score

            clip_model = clip_model_path(protocol)
            rows[name] = clip_score(images, prompts, clip_model).per_image
            fingerprints[name] = clip_model
        else:
            raise MetricsError(f"metric {name!r}: no per-image score for network {metric.network}")
    return rows, fingerprints


@overload
def metric_statistic(
    name: str, protocol: dict[str, Any], rows: None = None, *, seed: int = 0
) -> Callable[[np.ndarray], float]: ...
@overload
def metric_statistic(
    name: str, protocol: dict[str, Any], rows: np.ndarray, *, seed: int = 0
) -> float: ...
def metric_statistic(
    name: str, protocol: dict[str, Any], rows: np.ndarray | None = None, *, seed: int = 0
) -> Callable[[np.ndarray], float] | float:
    """One metric's value from per-image rows (:func:`metric_rows`,
    ``ldmscale.sweep.cell_rows``).

    ``metric_statistic(name, protocol, rows) -> float``: the value of metric ``name`` under the
    store row's ``protocol`` for ``rows`` (features ``[n, D]`` or values ``[n]``).
    ``metric_statistic(name, protocol) -> statistic`` returns the function ``statistic(rows) ->
    float`` instead (what a bootstrap calls many times). The statistic is the Fréchet distance
    to the protocol's reference (``fast_frechet``, built once per reference and process), KID
    (mean over subsets, subsets drawn with ``seed``), or the mean of per-image values
    (alignment, CLIP score). Feature metrics load the protocol's reference statistics (cached
    on disk after the first sweep). For a paired comparison of two cells of one protocol, call
    the statistic on the same resampled image indices of both cells' rows.
    """
    statistic = _statistic(get_metric(name), protocol, seed)
    return statistic if rows is None else float(statistic(rows))


def _statistic(
    metric: Metric, protocol: dict[str, Any], seed: int
) -> Callable[[np.ndarray], float]:
    if metric.statistic == "mean":
        return lambda rows: float(np.mean(rows))
    _, ref = reference_set(metric.name, protocol)
    if metric.statistic == "kid":
        from ldmscale.metrics.kid import kid

        return lambda rows: kid(rows, ref.features, seed=seed).mean
    key = (metric.name, id(ref))
    if key not in _FRECHET:  # one eigendecomposition of the reference covariance (2 s at 2,048-d)
        from ldmscale.metrics.frechet import fast_frechet

        _FRECHET[key] = fast_frechet(ref.stats.mean, ref.stats.cov)
    return _FRECHET[key]


def score_rows(
    rows: dict[str, np.ndarray], protocol: dict[str, Any], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Each metric's value with its bootstrap CI over the images, from :func:`metric_rows`:
    ``{name: {"value", "lo", "hi", "n"}}``, a percentile bootstrap with
    ``protocol["bootstrap"]`` resamples (seeded by ``seed``) at ``protocol["ci_level"]``; with
    fewer than 2 resamples or images, ``lo = hi = value``."""
    from ldmscale.metrics.bootstrap import bootstrap_ci

    n_boot = int(protocol.get("bootstrap", 0))
    alpha = 1.0 - float(protocol.get("ci_level", 0.95))
    out: dict[str, dict[str, float]] = {}
    for name in protocol["metrics"]:
        r = rows[name]
        statistic = metric_statistic(name, protocol, seed=seed)
        if n_boot >= 2 and len(r) >= 2:
            ci = bootstrap_ci(r, statistic, n_boot=n_boot, seed=seed, alpha=alpha)
            value, lo, hi = ci.estimate, ci.low, ci.high
        else:
            value = lo = hi = float(statistic(r))
        out[name] = {"value": value, "lo": lo, "hi": hi, "n": int(len(r))}
    return out


# ----------------------------------------------------------------------------- what they need


def _reference_spec(protocol: dict[str, Any]) -> dict[str, Any]:
    ref = protocol.get("reference") or {}
    if not ref.get("dataset"):
        raise MetricsError(
            "the metrics need a reference dataset: set `dataset` in the sweep config (its "
            "validation split is the reference set and, for shapes, trains the probe)"
        )
    return ref


def protocol_probe(protocol: dict[str, Any]) -> Any:
    """The shapes probe of the protocol's dataset and probe settings (trained once, cached on
    disk and in this process)."""
    from ldmscale.metrics.probe import ProbeConfig

    ref = _reference_spec(protocol)
    probe = protocol.get("probe") or {}
    key = ("probe", ref["dataset"], str(sorted(probe.items())))
    if key not in _CACHE:
        steps = int(probe.get("steps", ProbeConfig.steps))
        _CACHE[key] = build_network("probe", dataset=ref["dataset"], probe_steps=steps)
    return _CACHE[key]


def clip_model_path(protocol: dict[str, Any]) -> str:
    """The protocol's local CLIP folder for ``clip_score``; a MetricsError if unset or not one."""
    path = protocol.get("clip_model")
    if not path:
        raise MetricsError(
            "the clip_score metric needs a CLIP model: set `clip_model` in the sweep config "
            "(or pass --clip-model) to a local transformers CLIP folder (CLIPModel + processor "
            "saved with save_pretrained); nothing is downloaded"
        )
    if not (Path(path).expanduser() / "config.json").is_file():
        raise MetricsError(
            f"clip_model {path} is not a CLIP model folder (no config.json); give the folder "
            "written by CLIPModel.save_pretrained + CLIPProcessor.save_pretrained"
        )
    return str(path)


def reference_set(name: str, protocol: dict[str, Any], progress: bool = False) -> tuple[Any, Any]:
    """(feature extractor, cached reference set) of the feature metric ``name`` under the
    protocol; ``progress`` shows a bar while the reference features are computed (the driver's
    first call, before any cell)."""
    from ldmscale.metrics.reference import reference_stats

    metric = get_metric(name)
    ref = _reference_spec(protocol)
    key: tuple = (name, ref["dataset"], ref["split"], ref["resolution"])
    if metric.network == "probe":
        key += (str(sorted((protocol.get("probe") or {}).items())),)
    if key not in _CACHE:
        extractor = (
            protocol_probe(protocol) if metric.network == "probe" else build_network(metric.network)
        )
        refset = reference_stats(
            ref["dataset"],
            extractor,
            split=ref["split"],
            resolution=ref["resolution"],
            keep_features=metric.statistic == "kid",
            progress=progress,
        )
        _CACHE[key] = (extractor, refset)
    return _CACHE[key]
