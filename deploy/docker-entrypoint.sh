#!/bin/sh
# Entry point of the Hybrid-ES image: `hes serve --host 0.0.0.0 [ARGS]`, which needs HES_API_TOKEN.
# With HES_RAY_ADDRESS (host:port of a Ray head) set, first join that cluster as a node with no CPUs:
# the service creates each job's coordinator on its own node, where the job's output folder is, and a
# Ray driver can only attach to a cluster through a node of it.
set -eu
: "${HES_API_TOKEN:?HES_API_TOKEN must be set: the service listens on 0.0.0.0 and refuses to without a token}"
if [ -n "${HES_RAY_ADDRESS:-}" ]; then
  ray start --address="$HES_RAY_ADDRESS" --num-cpus=0 --metrics-export-port="${HES_RAY_METRICS_PORT:-8080}"
fi
exec hes serve --host 0.0.0.0 "$@"
