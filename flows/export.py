"""The export flow: publish completed episodes as new Parquet shards (run on a schedule)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.settings import flow_settings
from tasks.export import export_dataset_task


@flow(name="export-dataset", log_prints=True)
def export_flow(out: str | None = None) -> dict[str, Any]:
    """Export what is new since the last run to `out` (default: the DATASET_DIR setting)."""
    return export_dataset_task(flow_settings(), out)
