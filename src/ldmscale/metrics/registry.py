"""The metric registry: every metric a sweep can score, in one table.

Each :class:`Metric` says what the rest of the package needs to know about it: its name (as
the results store spells it), which way is better, whether it is a distance between feature
distributions (needs a reference set) or the mean of a per-image score, what it needs, what it
is and is not, and a rough cost. Adding a metric is one entry in :data:`METRICS`; a new feature
network is one more entry in :data:`NETWORKS`. Nothing here imports torch: the feature networks
are built on demand (:func:`build_network`).

Direction: ``"min"`` (lower is better: the Fréchet distances, KID) or ``"max"`` (higher is
better: text alignment, CLIP score). A name outside the table is an error
(:class:`UnknownMetricError`, listing the known names), never a guess from its spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ldmscale.metrics.common import MetricsError

Direction = Literal["min", "max"]
#: ``feature_distance``: a distance from the generated images' features to a reference set's;
#: ``per_image``: the mean of a score each image gets on its own (with its prompt).
Kind = Literal["feature_distance", "per_image"]
#: What a metric needs besides the images: ``reference`` (a dataset split of real images),
#: ``shapes_probe`` (the probe trained on a dataset with shapes attributes), ``prompts`` (each
#: image's prompt), ``clip_model`` (a local CLIP folder; nothing is downloaded),
#: ``ground_truth`` (each image's own ground-truth image or attributes: super-resolution only,
#: scored by :mod:`ldmscale.sr_eval`, not by a text-to-image sweep).
Need = Literal["reference", "shapes_probe", "prompts", "clip_model", "ground_truth"]
#: The statistic over per-image rows: Fréchet distance to the reference statistics, KID
#: against the reference features, or the mean.
Statistic = Literal["frechet", "kid", "mean"]


class UnknownMetricError(MetricsError):
    """A metric name that is not in the registry; the message lists the known ones."""


@dataclass(frozen=True)
class Metric:
    """One metric.

    name: the results store's spelling (a row's ``metrics`` key, a protocol's ``metrics``).
    label: the short display name (``FD-probe``). direction: ``min`` or ``max`` (which is
    better). kind: ``feature_distance`` or ``per_image``. needs: see :data:`Need`.
    note: one line on what it is and is not (the report prints it). seconds_per_image: rough
    scoring cost per generated image on 2 CPU cores, for dry-run estimates. network: the
    network behind it (a :data:`NETWORKS` key for feature distances; ``probe`` or ``clip``
    for per-image scores). statistic: see :data:`Statistic`.
    """

    name: str
    label: str
    direction: Direction
    kind: Kind
    needs: tuple[Need, ...]
    note: str
    seconds_per_image: float
    network: str
    statistic: Statistic


#: Every metric, by its store name. Seconds per image: Inception ~8-10 img/s and EfficientNet
#: ~22 img/s measured on 2 CPU cores; the probe, alignment and CLIP figures are guesses.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "fid",
            "FID",
            "min",
            "feature_distance",
            ("reference",),
            "FID (Frechet distance on Inception-v3 pool features), the paper's metric",
            1 / 10,
            "inception",
            "frechet",
        ),
        Metric(
            "fd_inception",
            "FD-Inception",
            "min",
            "feature_distance",
            ("reference",),
            "Frechet distance on Inception-v3 pool features: FID under another name",
            1 / 10,
            "inception",
            "frechet",
        ),
        Metric(
            "fd_effnet",
            "FD-EffNet",
            "min",
            "feature_distance",
            ("reference",),
            "FD-EffNet (Frechet distance on EfficientNet-Lite0 features), not FID; its values are "
            "not comparable to FID's",
            1 / 22,
            "effnet",
            "frechet",
        ),
        Metric(
            "fd_probe",
            "FD-probe",
            "min",
            "feature_distance",
            ("reference", "shapes_probe"),
            "FD-probe (Frechet distance on a small probe network's features), used instead of "
            "FID for speed; its values are not comparable to FID's",
            1 / 200,
            "probe",
            "frechet",
        ),
        Metric(
            "kid",
            "KID",
            "min",
            "feature_distance",
            ("reference",),
            "KID (kernel inception distance: unbiased MMD on Inception features, mean over "
            "subsets); not FID",
            1 / 20,
            "inception",
            "kid",
        ),
        Metric(
            "alignment",
            "alignment",
            "max",
            "per_image",
            ("shapes_probe", "prompts"),
            "text-image alignment score: the fraction of images whose shapes-probe read-out "
            "matches the caption (shapes data only)",
            1 / 100,
            "probe",
            "mean",
        ),
        Metric(
            "clip_score",
            "CLIP score",
            "max",
            "per_image",
            ("clip_model", "prompts"),
            "CLIP score (text-image alignment): raw cosine of CLIP image and prompt embeddings, "
            "the paper's ~0.31 scale, not x100",
            1 / 10,
            "clip",
            "mean",
        ),
        # Super-resolution (ldmscale.metrics.sr): each SR output against its own HR image.
        Metric(
            "psnr",
            "PSNR",
            "max",
            "per_image",
            ("ground_truth",),
            "PSNR (dB, peak 255) of each SR output against its ground-truth HR image",
            1 / 5000,
            "pixels",
            "mean",
        ),
        Metric(
            "ssim",
            "SSIM",
            "max",
            "per_image",
            ("ground_truth",),
            "SSIM (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) of each SR output against "
            "its ground-truth HR image",
            1 / 2000,
            "pixels",
            "mean",
        ),
        Metric(
            "attr_acc",
            "attribute accuracy",
            "max",
            "per_image",
            ("ground_truth", "shapes_probe"),
            "the shapes probe's read-out of each SR output against the HR image's true "
            "attributes: the fraction of its objects' shape, colour and size it gets right",
            1 / 100,
            "probe",
            "mean",
        ),
        Metric(
            "object_acc",
            "object accuracy",
            "max",
            "per_image",
            ("ground_truth", "shapes_probe"),
            "the fraction of each HR image's true objects whose shape, colour and size the "
            "shapes probe reads right in the SR output",
            1 / 100,
            "probe",
            "mean",
        ),
    )
}


def known_metrics() -> list[str]:
    """The registered metric names, in table order."""
    return list(METRICS)


def get_metric(name: str) -> Metric:
    """The registry entry of ``name``; :class:`UnknownMetricError` (listing the known names) if
    there is none."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise UnknownMetricError(
            f"unknown metric {name!r}; known metrics: {known_metrics()} "
            "(a new metric is one entry in ldmscale.metrics.registry.METRICS)"
        ) from None


def check_metrics(names: Iterable[str]) -> list[Metric]:
    """The entries of ``names``, in order; :class:`UnknownMetricError` on the first unknown."""
    return [get_metric(n) for n in names]


def metric_direction(name: str) -> Direction:
    """``"min"`` if lower is better (``fid``, ``fd_*``, ``kid``), ``"max"`` if higher is better
    (``alignment``, ``clip_score``); :class:`UnknownMetricError` for a name not in the table."""
    return get_metric(name).direction


def feature_metrics() -> tuple[str, ...]:
    """The names of the feature-distance metrics (those that need a reference set)."""
    return tuple(n for n, m in METRICS.items() if m.kind == "feature_distance")


# ----------------------------------------------------------------------------- networks


def _inception(**_: Any) -> Any:
    from ldmscale.metrics.fid import InceptionFeatures

    return InceptionFeatures()


def _effnet(**_: Any) -> Any:
    from ldmscale.metrics.effnet import EffNetFeatures

    return EffNetFeatures()


def _probe(
    *,
    dataset: str | Path | None = None,
    probe_steps: int | None = None,
    probe_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    **_: Any,
) -> Any:
    from ldmscale.metrics.probe import ProbeConfig, load_probe, probe_for_dataset

    if probe_dir is not None:
        return load_probe(probe_dir)
    if dataset is None:
        raise MetricsError("the shapes probe needs a dataset with shapes attributes or a probe")
    cfg = None if probe_steps is None else ProbeConfig(steps=int(probe_steps))
    return probe_for_dataset(dataset, cfg, cache_dir=cache_dir)


#: Feature networks by name: ``builder(dataset=, probe_steps=, probe_dir=, cache_dir=)`` returns
#: a :class:`~ldmscale.metrics.common.FeatureExtractor`. The probe is trained on ``dataset``
#: (cached) unless ``probe_dir`` names a saved one; ``probe_steps`` None is the probe's default.
NETWORKS: dict[str, Callable[..., Any]] = {
    "inception": _inception,
    "effnet": _effnet,
    "probe": _probe,
}


def build_network(network: str, **inputs: Any) -> Any:
    """The feature extractor ``network`` (a :data:`NETWORKS` key) built from ``inputs``."""
    if network not in NETWORKS:
        raise MetricsError(f"unknown feature network {network!r}; known: {list(NETWORKS)}")
    return NETWORKS[network](**inputs)
