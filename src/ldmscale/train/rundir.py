"""The run folder: who owns it (``train_config.json``) and its log (``log.jsonl``).

```
<run>/train_config.json   the TrainConfig; a rerun must match it (run_dir aside)
<run>/log.jsonl           one JSON line per log interval, appended with one write + fsync
<run>/checkpoints/        see ldmscale.train.checkpoint
<run>/evals/step-N/       kept EMA models (TrainConfig.eval_steps), see ldmscale.train.export
<run>/model/              the exported model, see ldmscale.train.export
```
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ldmscale.config import ConfigError
from ldmscale.io import atomic_write_text
from ldmscale.train.config import RunMismatchError, TrainConfig

CONFIG_FILE = "train_config.json"
LOG_FILE = "log.jsonl"
EVALS_DIR = "evals"
#: The ``init_from`` parent as it was at the fresh start (path and weight hash).
PARENT_FILE = "parent.json"


def claim_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool) -> None:
    """Create the run folder, or check that it belongs to ``cfg`` (refuse to mix runs).

    Two configs are the same run when their ``to_dict()`` agree apart from ``run_dir`` (fields
    left at an ``omit_if_default`` default are absent from both, so a folder written before
    such a field existed still matches). ``overwrite`` deletes the run's outputs first."""
    cfg_file = run_dir / CONFIG_FILE
    ours = (CONFIG_FILE, LOG_FILE, "checkpoints", "model", EVALS_DIR, PARENT_FILE)
    if overwrite:
        for name in ours:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if cfg_file.is_file():
        try:
            old = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, ConfigError) as e:
            raise RunMismatchError(
                f"{cfg_file} is unreadable ({e}); use another run_dir or rerun with --overwrite"
            ) from e
        a, b = old.to_dict(), cfg.to_dict()
        a.pop("run_dir"), b.pop("run_dir")  # a run folder may be moved or copied, and resumed
        if a != b:
            diff = {
                k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            }
            raise RunMismatchError(
                f"run folder {run_dir} holds a run with a different config "
                f"(differences, existing -> requested: {diff}). Use another run_dir, or rerun with "
                "--overwrite to delete that run and start afresh"
            )
        return
    if any((run_dir / n).exists() for n in ours[1:]):
        raise RunMismatchError(
            f"{run_dir} has training outputs but no train_config.json, so it cannot be resumed; "
            "use another run_dir or rerun with --overwrite"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(cfg_file)


def trim_log(log_path: Path, last_step: int) -> None:
    """Keep only complete log lines with ``step <= last_step`` (dedupe after a resume)."""
    if not log_path.is_file():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if isinstance(rec, dict) and rec.get("step", math.inf) <= last_step:
            keep.append(line)
    atomic_write_text(log_path, "".join(k + "\n" for k in keep))


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write, then fsync (a kill leaves whole lines)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
