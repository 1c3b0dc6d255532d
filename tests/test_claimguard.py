"""The claim guard gives a killed batch's episodes back at once, and keeps out of a batch that
settled its claims itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from podcastpile.store import EpisodeStore, NewEpisode
from tests.processes import alive
from tests.storehelpers import release

ROOT = Path(__file__).resolve().parent.parent

# A batch process in miniature: claims three episodes, starts a guard, starts the first one.
OWNER = textwrap.dedent("""
    import os, signal, sys, time
    from podcastpile.claimguard import ClaimGuard
    from podcastpile.store import EpisodeStore, make_engine
    from tests.storehelpers import release
    url, settle = sys.argv[1], sys.argv[2] == "settle"
    store = EpisodeStore(make_engine(url), archive_required=False, max_attempts=3)
    claims = store.claim_batch("owner", 3)
    guard = ClaimGuard.start(url, claims, max_attempts=3)
    os.kill(guard.pid, signal.SIGTERM)  # a worker stopped right after the claim: the guard must live on
    store.start(claims[0].episode_id, claims[0].lease_token)
    if sys.argv[2] == "overlap":  # the first still scored while the second runs its model steps
        store.start(claims[1].episode_id, claims[1].lease_token)
        guard.blame(claims[1].episode_id)
    if settle:  # finishes the first, gives back the second, keeps the third held on purpose
        store.complete(claims[0].episode_id, claims[0].lease_token, {"duration": 1.0})
        release(store, claims[1].episode_id, claims[1].lease_token)
        guard.dismiss()
    print(guard.pid, flush=True)
    time.sleep(0 if settle else 600)
""")


def _owner(database_url: str, mode: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, database_url, mode], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line, owner.communicate()
    return owner, int(line)



def test_a_killed_batch_gets_its_episodes_back_from_its_guard(store: EpisodeStore, database_url: str) -> None:
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(4)])
    owner, guard = _owner(database_url, "hold")
    try:
        os.kill(guard, signal.SIGTERM)  # what stops a worker's process group does not stop the guard
        os.kill(owner.pid, signal.SIGKILL)  # as the Prefect worker does to its runs when stopped
        killed = time.monotonic()
        owner.wait(timeout=10)
        while any(row.status in ("assigned", "processing") for row in store.list()):
            # Nothing else here gives episodes back (no crash detection, leases last hours), so this
            # is the guard's doing. About a second on a quiet machine; the bound is loose because a
            # guard started just before the kill may still be importing SQLAlchemy on a loaded CI
            # machine (CI once took over 10 s there, PostgreSQL, 4 test processes on 2 cores).
            assert time.monotonic() - killed < 45, [(row.status, row.attempts) for row in store.list()]
            time.sleep(0.05)
        print(f"given back {time.monotonic() - killed:.2f} s after the kill")
    finally:
        if owner.poll() is None:
            owner.kill()
    rows = store.list()
    in_progress = rows[0]
    assert (in_progress.status, in_progress.attempts, in_progress.error_code) == ("pending", 1, "run-crashed")
    assert "batch process holding it died (attempt 1 of 3)" in in_progress.error
    assert [(row.status, row.attempts) for row in rows[1:]] == [("pending", 0)] * 3  # not counted
    assert all(row.lease_token is None for row in rows)
    deadline = time.monotonic() + 10
    while alive(guard):
        assert time.monotonic() < deadline, "the guard must exit once it gave the episodes back"
        time.sleep(0.05)


def test_a_death_is_counted_against_the_episode_in_its_model_steps_only(store: EpisodeStore, database_url: str) -> None:
    """Two in progress (one scored beside the next one's model steps): only the blamed one counts."""
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(3)])
    owner, guard = _owner(database_url, "overlap")
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    deadline = time.monotonic() + 45
    while any(row.status in ("assigned", "processing") for row in store.list()):
        assert time.monotonic() < deadline, [(row.status, row.attempts) for row in store.list()]
        time.sleep(0.05)
    rows = store.list()
    assert [(row.status, row.attempts) for row in rows] == [("pending", 0), ("pending", 1), ("pending", 0)]
    assert rows[1].error_code == "run-crashed" and rows[0].error_code is None


def test_a_dismissed_guard_touches_nothing_and_is_reaped(store: EpisodeStore, database_url: str) -> None:
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(3)])
    owner, guard = _owner(database_url, "settle")
    _, stderr = owner.communicate(timeout=30)
    assert owner.returncode == 0, stderr
    assert not Path(f"/proc/{guard}").exists()  # exited and reaped by the batch, no zombie left
    assert [row.status for row in store.list()] == ["completed", "pending", "assigned"]


def test_give_back_abandoned_is_fenced_by_lease_tokens_and_counts_attempts(store: EpisodeStore) -> None:
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(3)])
    first, second, third = store.claim_batch("dead", 3)
    store.start(first.episode_id, first.lease_token)
    release(store, third.episode_id, third.lease_token)
    (retaken,) = store.claim_batch("alive", 1)  # someone else holds the third one now
    held = {c.episode_id: c.lease_token for c in (first, second, third)}
    store.max_attempts = 1  # the in-progress one has used up its attempts
    assert store.give_back_abandoned(held) == (1, 1)
    assert [(row.status, row.attempts) for row in store.list()] == [("failed", 1), ("pending", 0), ("assigned", 1)]
    assert store.get(retaken.episode_id).lease_token == retaken.lease_token
