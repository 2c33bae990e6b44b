#!/usr/bin/env bash
# Start a local Flower deployment with TLS + SuperNode authentication on 127.0.0.1:
# credentials (server/deploy/credentials.py), a SuperLink, N registered SuperNodes. Then run the app with
#   server/deploy/run.sh WORKDIR "aggregator='median' rounds=2 num-clients=3"
# and stop everything with server/deploy/stop.sh WORKDIR.
# Usage: server/deploy/start.sh WORKDIR [N_SUPERNODES] [MALICIOUS_PARTITION_ID...]
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir=${1:?usage: server/deploy/start.sh WORKDIR [N] [MALICIOUS_PID...]}
n=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
args=()
for pid in "$@"; do args+=(--malicious "$pid"); done
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m fedshield.server.deploy.local start "$workdir" --supernodes "$n" "${args[@]}"
