"""Task over the dataset export: one incremental export run, retried on transient I/O errors.

A retry is safe: the export is idempotent (it continues from what the ledger committed and
cleans up what an interrupted attempt left in staging).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from sqlalchemy.exc import OperationalError

from podcastpile.config import Settings
from podcastpile.dataset.audio import ArchiveAccess, AudioOptions
from podcastpile.dataset.export import export_dataset
from podcastpile.dataset.writer import WriterLimits
from podcastpile.store import make_engine, migrate


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    # Network filesystems and a restarted database fail with these; a bad destination URL or
    # an inconsistent dataset (RuntimeError subclasses) would only fail again.
    error = state.result(raise_on_failure=False)
    return isinstance(error, (OSError, OperationalError))


@task(
    name="export-dataset",
    retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
    retry_condition_fn=_transient, cache_policy=NONE,
)
def export_dataset_task(settings: Settings, out: str | None = None, where: str | None = None) -> dict[str, Any]:
    """Export completed episodes not yet in the dataset (`out`, default DATASET_DIR); return the summary.

    `where`: only episodes passing this filter, into the filtered release `out` (see `filtered_release`).
    """
    from dataclasses import asdict

    filtered_release(out, where)
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        audio = None
        if settings.dataset_audio != "none":
            audio = AudioOptions(
                codec=str(settings.dataset_audio), pad=settings.dataset_audio_pad,
                access=ArchiveAccess.from_settings(settings),
            )
        summary = export_dataset(
            engine,
            out or settings.dataset_dir,
            limits=WriterLimits(max_bytes=settings.shard_max_bytes, max_rows=settings.shard_max_rows),
            audio=audio,
            where=where,
        )
    finally:
        engine.dispose()
    return asdict(summary)


def filtered_release(out: str | None, where: str | None) -> None:
    """Refuse a filter without its own destination, as `ppcli export --where` does: a filtered
    release goes beside the full dataset (DATASET_DIR), never in its place. A bad filter itself
    is refused by the export (`FilterError`, not retried)."""
    if where and not out:
        raise ValueError("where= writes a filtered release: name its location with out=")


EXPORT_DEPLOYMENT = "export-dataset/export"


@task(name="publish-when-drained", cache_policy=NONE)
def publish_when_drained(settings: Settings) -> str | None:
    """Start the export deployment now when no episode is left to claim or in progress.

    The hourly export publishes a steady stream; this publishes a finished queue at once
    instead of up to an hour later. Runs of the export deployment queue one behind the other
    (its concurrency limit is 1), so several batches finishing together are harmless.
    Returns the new run's id, or None when work remains.
    """
    from prefect.deployments import run_deployment

    from tasks.resources import store_for

    store = store_for(settings)
    if store.count_claimable() or store.count_leased():
        return None
    run = run_deployment(EXPORT_DEPLOYMENT, timeout=0, as_subflow=False)
    return str(run.id)
