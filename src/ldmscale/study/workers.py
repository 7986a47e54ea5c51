"""Training several widths at once, each in its own process.

On a few CPU cores the narrow UNets of the CPU presets do not use two threads well: one c = 32
training step takes about as long on one thread as on two (2026-12-03, 2-core AMD EPYC), so two
widths trained side by side, one thread each, finish in about the time of the longer one. This
module runs ``ldmscale train --config <file>`` once per width in ``workers`` subprocesses
(largest width first, so the longest run starts first), ``threads`` OpenMP threads each.

Each run is an ordinary resumable training run: a killed study resumes every width from its
own newest checkpoint. A width's weights depend on the thread count it trained with (the order
of floating-point sums), so a study trained with ``train_workers = 2`` is reproducible with
that setting, not bit-equal to one trained in a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ldmscale.progress import show_bar
from ldmscale.train import TrainConfig

#: A child's output goes here, inside its run folder.
CHILD_LOG = "train.out"


class TrainWorkerError(RuntimeError):
    """A training subprocess failed; the message names the width, its log and its last lines."""


def _latest_step(run_dir: Path) -> int:
    """The newest step in ``<run_dir>/log.jsonl`` (0 when there is none yet)."""
    path = run_dir / "log.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue
    return 0


def _train_one(cfg: TrainConfig, request: Path, threads: int) -> tuple[int, Path]:
    """Run one width's training in a subprocess; returns ``(exit code, its log file)``."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(request)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = run_dir / CHILD_LOG
    cmd = [sys.executable, "-m", "ldmscale", "train", "--config", str(request), "--no-progress"]
    with open(out, "ab") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    return code, out


def train_in_workers(
    cfgs: list[TrainConfig],
    workers: int,
    threads: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> None:
    """Train every config of ``cfgs`` (one width each), ``workers`` at a time.

    Requests are written beside the run folders (``<run_dir>.request.json``); each child's
    output goes to ``<run_dir>/train.out``. A progress bar follows the runs' ``log.jsonl``.
    Raises :class:`TrainWorkerError` after every run has ended if any of them failed (the
    others are kept: rerunning the study resumes only what is missing).
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got {workers}, {threads}")
    order = sorted(cfgs, key=lambda c: -c.c)  # the longest first
    total = sum(c.steps for c in order)
    bar = None
    if show_bar(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="train (all widths)", unit="step")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            c.c: pool.submit(_train_one, c, Path(f"{c.run_dir}.request.json"), threads)
            for c in order
        }
        while not all(f.done() for f in futures.values()):
            if bar is not None:
                bar.n = sum(min(_latest_step(Path(c.run_dir)), c.steps) for c in order)
                bar.refresh()
            time.sleep(1.0)
    if bar is not None:
        bar.n = sum(min(_latest_step(Path(c.run_dir)), c.steps) for c in order)
        bar.close()
    failed = []
    for c in order:
        code, out = futures[c.c].result()
        if code != 0:
            tail = "\n".join(out.read_text(errors="replace").splitlines()[-15:])
            failed.append(f"c={c.c} exited with {code}; its log {out} ends:\n{tail}")
        else:
            log(f"[study]   c={c.c}: trained ({out})")
    if failed:
        raise TrainWorkerError(
            "training failed for " + "; ".join(failed) + "\nFix the cause and rerun the same "
            "command: finished widths are kept and the others resume from their checkpoints"
        )
