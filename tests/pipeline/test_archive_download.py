"""The batch flow downloading archived copies: the capture's timestamp reaches the download, the
CDX digest is compared with the bytes as archived, and the downloaded size is counted.

A loopback "archive" replays captures at `/web/<ts>id_/<url>`; the tiny CPU models process them.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import select, update

from flows.process import process_batch
from podcastpile.store import EpisodeStore, NewEpisode
from podcastpile.store.tables import archive_days, episodes
from tasks.speech import download_audio
from tests.loopback import LoopbackServer, Reply
from tests.pipeline.conftest import AudioHost
from tests.storehelpers import mark_archived
from tests.wayback import sha1_base32

TS = "20260102030405"
MEMENTO = "Fri, 02 Jan 2026 03:04:05 GMT"
ORIGINAL = "https://podcasts.example.com/show/ep1.wav"


@pytest.fixture(scope="module", autouse=True)
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def archive() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


def archived_episode(store: EpisodeStore, archive: LoopbackServer, **values: object) -> int:
    """An episode whose capture at TS is on the loopback archive, ready to process."""
    queue = EpisodeStore(store.engine, archive_required=True)
    queue.add([NewEpisode(ORIGINAL, language="en")])
    episode = queue.find(ORIGINAL)
    assert episode is not None
    mark_archived(queue, episode.id, timestamp=TS, archive_url=archive.url(f"/web/{TS}id_/{ORIGINAL}"))
    if values:
        with store.engine.begin() as connection:
            connection.execute(update(episodes).where(episodes.c.id == episode.id).values(**values))
    return episode.id


def test_a_replay_lag_requeues_the_episode_and_never_takes_another_capture(
    pipeline_store: EpisodeStore, archive: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download_audio, "retry_delay_seconds", [0, 0, 0])  # the task's own retries, at once
    older = f"/web/20250811000000id_/{ORIGINAL}"
    archive.routes[f"/web/{TS}id_/{ORIGINAL}"] = lambda r: Reply(302, b"", {"Location": older})
    archive.routes[older] = lambda r: Reply(200, b"RIFF another capture", {"Content-Type": "audio/wav"})
    episode_id = archived_episode(pipeline_store, archive)

    (outcome,) = process_batch()["outcomes"]

    assert outcome["status"] == "pending" and outcome["reason"].startswith("archive-replay-mismatch")
    assert archive.hits[older] == 0
    assert archive.hits[f"/web/{TS}id_/{ORIGINAL}"] == 4  # the download task retried it three times
    row = pipeline_store.get(episode_id)
    assert (row.status, row.error_code) == ("pending", "archive-replay-mismatch")


def test_a_gzip_capture_is_verified_as_archived_processed_decoded_and_counted(
    pipeline_store: EpisodeStore, archive: LoopbackServer, conversation: dict
) -> None:
    wav = conversation["wav"].read_bytes()
    archived = gzip.compress(wav)  # captured with Content-Encoding: gzip, and replayed so
    archive.routes[f"/web/{TS}id_/{ORIGINAL}"] = lambda r: Reply(
        200, archived, {"Content-Type": "audio/wav", "Content-Encoding": "gzip", "Memento-Datetime": MEMENTO})
    cdx_length = 1234  # CDX's length: the compressed WARC record, counted when the capture was made
    episode_id = archived_episode(pipeline_store, archive, archive_digest=sha1_base32(archived),
                                  archive_reused=False, archive_bytes=cdx_length)
    with pipeline_store.engine.begin() as connection:
        connection.execute(archive_days.insert().values(day="2026-01-02", captures=1, bytes=cdx_length))

    (outcome,) = process_batch()["outcomes"]

    assert outcome["status"] == "completed", outcome
    row = pipeline_store.get(episode_id)
    assert row.audio_sha256 == hashlib.sha256(wav).hexdigest()  # the decoded audio
    with pipeline_store.engine.connect() as connection:
        counted = connection.execute(select(episodes.c.archive_bytes, episodes.c.archive_bytes_downloaded)
                                     .where(episodes.c.id == episode_id)).one()
        day = connection.execute(select(archive_days.c.captures, archive_days.c.bytes)).one()
    assert tuple(counted) == (len(archived), True)
    assert tuple(day) == (1, len(archived))  # the day holds what was downloaded, not CDX's guess


def test_a_digest_mismatch_is_retried_once_then_permanent(
    pipeline_store: EpisodeStore, audio_host: AudioHost
) -> None:
    pipeline_store.add([NewEpisode(audio_host.url("good-mismatch.wav"))])
    with pipeline_store.engine.begin() as connection:  # as if CDX had recorded other bytes
        connection.execute(update(episodes).values(archive_digest=sha1_base32(b"other")))

    first = process_batch()["outcomes"][0]
    second = process_batch()["outcomes"][0]

    assert first["status"] == "pending" and first["reason"].startswith("archive-digest-mismatch")
    assert second["status"] == "failed" and second["reason"].startswith("archive-digest-mismatch")
    (row,) = pipeline_store.list()
    assert (row.status, row.error_code, row.attempts) == ("failed", "archive-digest-mismatch", 2)
