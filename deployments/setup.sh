#!/usr/bin/env bash
# Create (or update) the work pools (`gpu` for batches, `cpu` for archive, dispatch and export)
# and deploy every flow in prefect.yaml.
# Needs PREFECT_API_URL pointing at the Prefect server. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
pool="${WORK_POOL:-gpu}"
prefect work-pool create "$pool" --type process --base-job-template deployments/gpu-pool.json --overwrite
prefect work-pool create cpu --type process --overwrite
prefect --no-prompt deploy --all
# Crash detection: a run whose heartbeats stop is marked CRASHED (deployments/automations.yaml).
"$(dirname "$(command -v prefect)")/python" deployments/automations.py
