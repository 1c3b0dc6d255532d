"""`ppcli archive`: the archive stage in this process, no Prefect needed."""

from __future__ import annotations

import json
import socket
from typing import Annotated

import typer

from podcastpile.cli.application import app
from podcastpile.cli.common import JsonOption, fail, open_store, settings
from podcastpile.cli.display import console, say
from podcastpile.net.urls import mask_secrets
from podcastpile.store.archive import archive_queue_for


@app.command()
def archive(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many episodes (default ARCHIVE_BATCH_SIZE).")] = None,
    max_minutes: Annotated[float, typer.Option(min=0.1, help="Stop after this long; unfinished jobs are resumed by the next run.")] = 10.0,
    json_output: JsonOption = False,
) -> None:
    """Archive waiting episodes in the Internet Archive now, in this process (no Prefect needed)."""
    # Here, not at the top: the stage loads httpx, which `ppcli stats` (loading every command
    # module to register it) does without.
    from podcastpile.archive.stage import ArchiveLimits, ArchiveStage, describe_event
    from podcastpile.archive.wayback import WaybackClient
    from podcastpile.net.redirects import resolver_for

    config = settings()
    if not config.archives:
        fail("ARCHIVE_MODE=off: there is nothing to archive")
    store = open_store(config)
    queue = archive_queue_for(store, config)
    claims = queue.claim(f"{socket.gethostname()}/ppcli-archive", limit or config.archive_batch_size)
    if not claims and not json_output:
        console.print("no episodes waiting for a capture (or all are deferred or held by another run)")

    def show(episode_id: int, event: str, detail: str) -> None:
        if not json_output and event != "pending":
            say(f"episode {episode_id}: {mask_secrets(describe_event(event, detail))}")

    with WaybackClient.from_settings(config) as client:  # the stage lets no client error out
        stage = ArchiveStage(queue, client, ArchiveLimits.from_settings(config), on_event=show,
                             resolve=resolver_for(config))
        summary = stage.run(claims, max_seconds=max_minutes * 60)
    if json_output:
        print(json.dumps({"claimed": len(claims), "submitted": summary.submitted, **summary.counts}))
    elif claims:
        say(f"{len(claims)} episodes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())))
