#!/usr/bin/env bash
# Stop the SuperLink/SuperNodes of server/deploy/start.sh (their process trees, by recorded pid).
# Usage: server/deploy/stop.sh WORKDIR
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m fedshield.server.deploy.local stop "${1:?usage: server/deploy/stop.sh WORKDIR}"
