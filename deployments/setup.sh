#!/usr/bin/env bash
# Create (or update) what the pipeline needs on the Prefect server PREFECT_API_URL names: the
# episode database migrated, work pools `gpu` and `cpu`, every deployment in prefect.yaml, the
# crash-detection automation and the store's connection block. Same as `ppcli setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "$(dirname "$(command -v prefect)")/python" -m podcastpile.cli setup "$@"
