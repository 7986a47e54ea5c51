"""Which config each stage's outputs were made with (``<out_dir>/stages.json``), and the check
that refuses to mix two configs in one stage.

Stages whose outputs later stages build on (the generated ``shapes``, the trained autoencoder,
each width's training run) *own* an output folder. When such a stage starts, its key and the
study config are recorded; before any stage of a later run, every owned stage whose folder
exists is checked: the same key passes, and so do different keys whose inputs, recomputed from
the recorded config by the current code, are equal (a field added by a later ldmscale version
compares at its default). Anything else is refused with the stage, the changed fields and the
fix. The other stages never refuse: their outputs are addressed by what made them (cells by
id, floors by protocol, sample grids by sampler and seeds) or rebuilt every time.

Folders written before this record existed hold ``study_config.json`` (the config the folder
was created with); it stands for every stage's record until the stage has one of its own.

File: ``{"format": "ldmscale-study-stages/1", "configs": {hash: StudyConfig dict}, "stages":
{stage id: {"key": key, "config": hash}}}``, written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmscale.config import ConfigError
from ldmscale.io import atomic_write_json, hash_json
from ldmscale.study.config import StudyConfig

if TYPE_CHECKING:
    from ldmscale.study.stages import Stage

RECORD_FILE = "stages.json"
LEGACY_FILE = "study_config.json"
FORMAT = "ldmscale-study-stages/1"


class StageMismatchError(ConfigError):
    """A stage's outputs were made with other inputs than the config asks for now."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted field: (old value, new value)}`` of every leaf that differs."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


class StageRecords:
    """The records of one study folder (read on creation, written on :meth:`record`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / RECORD_FILE
        self.configs: dict[str, dict[str, Any]] = {}
        self.stages: dict[str, dict[str, str]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.configs, self.stages = dict(data["configs"]), dict(data["stages"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"{self.path} cannot be read ({e}); use another --out folder"
                ) from e
        legacy = root / LEGACY_FILE
        self.legacy: dict[str, Any] | None = None
        if legacy.is_file():
            try:
                self.legacy = json.loads(legacy.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"{legacy} cannot be read as a study config ({e}); use another --out folder"
                ) from e

    def recorded_config(self, stage_id: str) -> StudyConfig | None:
        """The config ``stage_id``'s outputs were made with, if known."""
        entry = self.stages.get(stage_id)
        data = self.configs.get(entry["config"]) if entry else self.legacy
        if data is None:
            return None
        try:
            return StudyConfig.from_dict(data)
        except (ConfigError, TypeError, ValueError) as e:
            where = self.path if entry else self.root / LEGACY_FILE
            raise StageMismatchError(
                f"{where}: the config of stage {stage_id!r} cannot be read as a study config "
                f"({e}); use another --out folder, or delete that stage's outputs"
            ) from e

    def check(self, stage: Stage, cfg: StudyConfig) -> None:
        """Refuse (:class:`StageMismatchError`) if ``stage`` owns an existing folder made with
        other inputs than ``cfg`` gives it."""
        folder = stage.outputs(cfg) if stage.outputs else None
        if folder is None or not folder.exists():
            return
        entry = self.stages.get(stage.id)
        if entry is not None and entry["key"] == stage.key(cfg):
            return
        old_cfg = self.recorded_config(stage.id)
        if old_cfg is None:
            return  # outputs from before any record: adopted as they are
        old, new = stage.inputs(old_cfg), stage.inputs(cfg)
        if old == new:
            return
        diff = changed_fields(old, new)
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _first(diff, 8))
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise StageMismatchError(
            f"{self.root}: stage {stage.id!r} was run with a different config: {shown}{more}. "
            f"Its outputs ({folder}) would be mixed with the new settings. Use another --out "
            f"folder, or delete {folder} to run that stage again (and every stage built on it)"
        )

    def record(self, stage: Stage, cfg: StudyConfig) -> None:
        """Record that ``stage``'s outputs are (being) made with ``cfg``."""
        data = cfg.replace(out_dir="").to_dict()
        ref = hash_json(data)
        entry = {"key": stage.key(cfg), "config": ref}
        if self.stages.get(stage.id) == entry:
            return
        self.configs[ref] = data
        self.stages[stage.id] = entry
        used = {e["config"] for e in self.stages.values()}
        self.configs = {k: v for k, v in self.configs.items() if k in used}
        payload = {"format": FORMAT, "configs": self.configs, "stages": self.stages}
        atomic_write_json(self.path, payload)


def _first(diff: dict[str, tuple[Any, Any]], n: int) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in list(diff.items())[:n]]
