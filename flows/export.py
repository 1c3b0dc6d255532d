"""The export flow: publish completed episodes as new Parquet shards (run on a schedule).

With `where` it publishes a filtered release instead: only the episodes the filter keeps, into
its own dataset `out` (required then, as for `ppcli export --where`), through the same core
function the CLI calls. A second scheduled deployment with those two parameters keeps such a
release up to date beside the full dataset (see docs/dataset.md).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.export import export_dataset_task, filtered_release
from tasks.settings import flow_settings

# `out` decides where the manager's CPU worker writes: a run may not choose it, only prefect.yaml
# (a filtered release's own deployment) does; unset, the export writes DATASET_DIR. Workers
# refuse any other value (deployments/allowlist.py), so the password does not choose a path.
FIXED_PARAMETERS = ("out",)


@flow(name="export-dataset", log_prints=True)
def export_flow(out: str | None = None, where: str | None = None) -> dict[str, Any]:
    """Export what is new since the last run to `out` (default: the DATASET_DIR setting).

    `where`: a filter over the episode columns, e.g. "dnsmos_ovrl >= 3.0 and speech_ratio >= 0.8";
    only episodes that pass it are exported, to `out` (required with `where`).
    """
    filtered_release(out, where)  # refused here, before a task run is retried over it
    return export_dataset_task(flow_settings(), out, where)
