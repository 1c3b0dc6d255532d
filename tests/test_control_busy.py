"""The control loops ride out a busy SQLite Prefect database: a 503 is retried a moment later
(the server rolled the write back), other errors are not."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from podcastpile.cli.control import ControlLoops
from podcastpile.config import Settings
from podcastpile.prefect_api import PrefectAPI
from tests.loopback import LoopbackServer, Reply


def _loops(url: str, tmp_path: Path) -> ControlLoops:
    config = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}")
    return ControlLoops(PrefectAPI(url), config, say=lambda line: None)


def test_a_busy_answer_is_tried_again(tmp_path: Path) -> None:
    answers = [Reply(503, b'{"detail": "busy"}'), Reply(503, b'{"detail": "busy"}'),
               Reply(201, b'{"id": "run-1"}', {"Content-Type": "application/json"})]
    with LoopbackServer({"/deployments/*": lambda request: answers.pop(0)}) as server:
        assert _loops(server.base_url, tmp_path)._http("POST", "/deployments/d/create_flow_run", {}) == {"id": "run-1"}
        assert answers == []


def test_a_server_that_stays_busy_or_fails_otherwise_raises(tmp_path: Path) -> None:
    calls = []

    def answer(request):  # type: ignore[no-untyped-def]
        calls.append(request.path)
        return Reply(503 if request.path.endswith("busy") else 500, b"{}")

    with LoopbackServer({"/deployments/*": answer}) as server:
        loops = _loops(server.base_url, tmp_path)
        with pytest.raises(httpx.HTTPStatusError):
            loops._http("POST", "/deployments/busy", {})
        assert len(calls) == 4
        with pytest.raises(httpx.HTTPStatusError):
            loops._http("POST", "/deployments/broken", {})
        assert len(calls) == 5  # a 500 is not retried
