#!/usr/bin/env bash
# `flwr run . fedshield-tls --stream --run-config ...` against the federation of server/deploy/start.sh.
# Usage: server/deploy/run.sh WORKDIR "num-clients=3 rounds=2 aggregator='median' output-dir='/abs/out'"
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m fedshield.server.deploy.local run "${1:?usage: server/deploy/run.sh WORKDIR [RUN_CONFIG]}" . \
  --run-config "${2:-}"
