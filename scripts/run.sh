#!/usr/bin/env bash
# Set up and open the dashboard on the built-in default model (or $LLDD_DEFAULT_MODEL).
# It listens on localhost only (.streamlit/config.toml); exposing it is an explicit choice, e.g.
# `bash scripts/run.sh --server.address 0.0.0.0` (no login: see the README's Security section).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -r requirements.txt
exec "$PY" -m streamlit run app.py --browser.gatherUsageStats false "$@"
