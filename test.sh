#!/usr/bin/env bash
# The test suite: set up .venv if needed, lint, then run every test (slow ones included).
# Extra arguments go to pytest (e.g. ./test.sh -m "not slow" for the quick subset).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup.sh" test
cd "$ROOT"
# The report test renders HTML in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing chromium for the report test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "test: could not install chromium; the report rendering test will be skipped" >&2
fi
if command -v chromium >/dev/null 2>&1; then export LDMSCALE_REQUIRE_CHROMIUM=1; fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests: that is a failure here" >&2; exit 1; fi
exit "$rc"
