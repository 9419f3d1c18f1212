#!/usr/bin/env bash
# Set up and open the dashboard on the built-in default model (or $LLDD_DEFAULT_MODEL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -r requirements.txt
exec "$PY" -m streamlit run app.py --browser.gatherUsageStats false "$@"
