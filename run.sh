#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the study on the embedded `shapes` dataset.
# Extra arguments go to `ldmscale study` (default: --preset tiny).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ "$#" -eq 0 ]; then set -- --preset tiny; fi
exec "$ROOT/.venv/bin/ldmscale" study "$@"
