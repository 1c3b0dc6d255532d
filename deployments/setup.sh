#!/usr/bin/env bash
# Create (or update) the `gpu` work pool and deploy every flow in prefect.yaml.
# Needs PREFECT_API_URL pointing at the Prefect server. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
pool="${WORK_POOL:-gpu}"
prefect work-pool create "$pool" --type process --base-job-template deployments/gpu-pool.json --overwrite
prefect --no-prompt deploy --all
