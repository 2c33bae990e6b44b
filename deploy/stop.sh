#!/usr/bin/env bash
# Stop the SuperLink/SuperNodes of deploy/start.sh (their process trees, by recorded pid).
# Usage: deploy/stop.sh WORKDIR
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m deploy.local stop "${1:?usage: deploy/stop.sh WORKDIR}"
