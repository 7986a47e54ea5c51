"""What produced a result: the code version stamped on every artefact."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from ldmscale import __version__


@functools.cache
def code_version() -> str:
    """Package version plus the git commit (``0.1.0+g1a2b3c4d5e6f``, ``-dirty`` when the
    tree has uncommitted changes) when run from a checkout; the bare version otherwise."""
    here = Path(__file__).parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if not sha:
            return __version__
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'-dirty' if dirty else ''}"
