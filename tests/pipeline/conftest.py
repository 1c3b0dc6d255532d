"""Fixtures for pipeline tests: tiny models, audio on a loopback server, settings in the environment."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podcastpile.store import EpisodeStore, make_engine, migrate
from tests.loopback import LoopbackServer, Reply
from tests.wayback import with_ad

FIXTURES = Path(os.environ.get("PODCASTPILE_SPEECH_FIXTURES", Path(__file__).parent.parent / "fixtures" / "speech"))


@pytest.fixture(scope="session")
def conversation() -> dict:
    """Ground truth of the synthetic two-speaker conversation the tiny models were trained on."""
    info = json.loads((FIXTURES / "conversation.json").read_text())
    info["wav"] = FIXTURES / "conversation.wav"
    info["truth"] = [(turn["speaker"], turn["text"]) for turn in info["turns"]]
    return info


class AudioHost:
    """A loopback podcast host: good files, a 404, a flaky one (500 once, then 200), a non-audio
    file, and a slow one.

    Every path serves the conversation with its own path in a RIFF JUNK chunk: the same
    samples, but different files, as different episodes are (identical bytes would make all
    but the first a duplicate). `/ep/copy-*` all serve one identical file.
    """

    def __init__(self, wav: bytes) -> None:
        self.flaky_failures = 1

        def own(request):  # type: ignore[no-untyped-def]
            return Reply(200, with_ad(wav, request.path.encode()), {"Content-Type": "audio/wav"})

        def flaky(request):  # type: ignore[no-untyped-def]
            if self.flaky_failures > 0:
                self.flaky_failures -= 1
                return Reply(500, b"try later")
            return own(request)

        def slow(request):  # type: ignore[no-untyped-def]
            # A host that trickles: each read arrives well within the read timeout, but the
            # whole file takes ~40 s, twice a test's 20 s episode budget.
            def trickle():  # type: ignore[no-untyped-def]
                step = len(wav) // 40 + 1
                for start in range(0, len(wav), step):
                    time.sleep(1.0)
                    yield wav[start:start + step]
            return Reply(200, trickle(), {"Content-Type": "audio/wav"})

        self.server = LoopbackServer({
            "/ep/good-*": own,
            "/ep/copy-*": lambda r: Reply(200, wav, {"Content-Type": "audio/wav"}),
            "/ep/slow.wav": slow,
            "/ep/flaky.wav": flaky,
            "/ep/not-audio.wav": lambda r: Reply(200, b"\x00\x01garbage" * 500, {"Content-Type": "audio/wav"}),
        })

    def url(self, name: str) -> str:
        return self.server.url(f"/ep/{name}")


def trickled(body: bytes, pieces: int = 4, every: float = 1.0) -> Reply:
    """An answer that sends `body` in `pieces`, one every `every` s (a slow host)."""
    def chunks():  # type: ignore[no-untyped-def]
        step = len(body) // pieces + 1
        for start in range(0, len(body), step):
            time.sleep(every)
            yield body[start:start + step]
    return Reply(200, chunks(), {"Content-Type": "audio/wav"})


@pytest.fixture
def slow_host(conversation: dict) -> Iterator[LoopbackServer]:
    """Every `/ep/*` path is its own episode (the conversation, a JUNK chunk naming the path),
    trickled over ~4 s, so a batch is still running when a test stops or kills something."""
    wav = conversation["wav"].read_bytes()
    with LoopbackServer({"/ep/*": lambda request: trickled(with_ad(wav, request.path.encode()))}) as server:
        yield server


@pytest.fixture
def audio_host(conversation: dict) -> Iterator[AudioHost]:
    host = AudioHost(conversation["wav"].read_bytes())
    with host.server:
        yield host


def pipeline_environment(database_url: str, **extra: str) -> dict[str, str]:
    """Settings (as environment variables) for a pipeline run on the tiny CPU models."""
    return {
        "DATABASE_URL": database_url,
        "ARCHIVE_MODE": "off",
        "DIAR_MODEL": str(FIXTURES / "tiny_diar.nemo"),
        "ASR_MODEL": str(FIXTURES / "tiny_asr.nemo"),
        "ASR_MODEL_MULTILINGUAL": str(FIXTURES / "tiny_asr.nemo"),
        "DEVICE": "cpu",
        "DOWNLOAD_TIMEOUT_SECONDS": "10",
        "BATCH_SIZE": "8",
        "ALLOW_PRIVATE_ADDRESSES": "true",  # the audio host is on 127.0.0.1
        **extra,
    }


@pytest.fixture
def pipeline_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Put the pipeline's settings in this process's environment; returns the database URL."""
    for key, value in pipeline_environment(database_url).items():
        monkeypatch.setenv(key, value)
    return database_url


@pytest.fixture
def pipeline_store(pipeline_env: str) -> Iterator[EpisodeStore]:
    engine = make_engine(pipeline_env)
    migrate(engine)
    yield EpisodeStore(engine, archive_required=False)
    engine.dispose()
