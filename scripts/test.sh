#!/usr/bin/env bash
# Set up and run the whole test suite (unit, app and real-browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -r requirements-dev.txt
# The browser test drives Debian's chromium (Playwright's own browser download is not used).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; the browser test will be skipped (install Debian's 'chromium' to run it)" >&2
  fi
fi
# Two workers, one per core (LLDD_TEST_WORKERS=0 runs in this process); each module's tests stay on one worker so
# its module-scoped fixtures are built once. Workers compute on one thread each (tests/conftest.py).
WORKERS="${LLDD_TEST_WORKERS:-2}"
if [ "$WORKERS" = 0 ]; then
  exec "$PY" -m pytest "$@"
fi
exec "$PY" -m pytest -n "$WORKERS" --dist loadfile "$@"
