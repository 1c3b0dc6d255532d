"""The claim guard: a small helper process that gives a batch's episodes back to the queue when
the process that claimed them dies holding them.

Why it exists: `prefect worker start` (Prefect 3.9's process worker), on its first SIGTERM or
Ctrl+C, SIGKILLs its flow-run processes within milliseconds (cancelling a run closes its
asyncio subprocess transport, which kills the child; measured with strace: SIGKILL 35 ms
after the worker's own SIGINT, before any SIGTERM), so the batch's own `finally` never runs.
The OOM killer and `kill -9` do the same. Without the guard those episodes stay leased until
the heartbeat automation marks the run CRASHED (~90 s) and `dispatch` requeues them, or until
their lease expires (`JOB_TIMEOUT_HOURS`).

How: a batch starts the guard right after its claim and sends it the claims over a pipe. The
guard lives in its own session and ignores SIGTERM, SIGINT and SIGHUP, so the signals that
stop a worker, its process group or its terminal do not stop it. It then waits on the pipe.
The batch writes `done` once it has settled its claims itself (finished or released them);
end-of-file without `done` means the batch's process is gone (the kernel closes the pipe however
a process dies) and the guard gives back what the claims still hold, within milliseconds (its
imports and engine are ready beforehand): episodes not started yet as a release (attempt not
counted), the one in progress as a crash (attempt counted; see
`EpisodeStore.give_back_abandoned`). Lease tokens fence it: an episode someone else holds by
then, or one already finished, is not touched. A batch that scores one episode while the next
runs its model steps has two in progress; it tells the guard (`blame`) which one is in its
model steps, and only that one's attempt counts.

POSIX only (sessions); no Prefect imports (it runs in `ppcli process` and in flow runs alike).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

DONE = "done"
BLAME = "blame"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# How long the guard keeps trying when the database does not answer; after that, crash
# detection (heartbeats → CRASHED → dispatch) or lease expiry brings the episodes back.
RETRY_SECONDS = 60.0


class ClaimGuard:
    """The batch's side of the guard: start it with the claims, dismiss it once they are settled."""

    def __init__(self, process: subprocess.Popen, pipe: IO[str]) -> None:
        self._process = process
        self._pipe: IO[str] | None = pipe

    @classmethod
    def start(cls, database_url: str, claims: list[Any], *, max_attempts: int) -> "ClaimGuard":
        """Start a guard for `claims` (`podcastpile.store.Claim`s) on the store at `database_url`."""
        # Same interpreter, environment and working directory as the batch, so it imports the
        # same code; this package's own root comes last on the path, only as a fallback (before
        # the standard library, as PYTHONPATH would put it, it could shadow stdlib modules).
        package_root = str(Path(__file__).resolve().parent.parent)
        boot = f"import sys; sys.path.append({package_root!r}); from podcastpile.claimguard import main; sys.exit(main())"
        # A stop right after the claim must not kill a guard that has not reached main() yet.
        # The child starts with the stop signals blocked (a blocked signal waits, and the mask
        # survives fork and exec); sh then ignores them, which discards one already waiting, and
        # an ignored signal stays ignored across exec. Ignoring them in sh alone left a window
        # between exec and `trap`: an immediate SIGTERM killed 185 guards of 200.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", 'trap "" HUP INT TERM; exec "$0" -c "$1"', sys.executable, boot],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                start_new_session=True,  # out of reach of signals to the batch's process group
            )
        finally:  # a stop that arrived meanwhile is delivered to this process now
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        assert process.stdin is not None
        job = {
            "database_url": database_url,
            "max_attempts": max_attempts,
            "owner": os.getpid(),
            "claims": [[claim.episode_id, claim.lease_token] for claim in claims],
        }
        process.stdin.write(json.dumps(job) + "\n")
        process.stdin.flush()
        return cls(process, process.stdin)

    @property
    def pid(self) -> int:
        return self._process.pid

    def blame(self, episode_id: int) -> None:
        """`episode_id` starts its model steps: should the batch die from now on, count the
        attempt against it, not against the episodes still being scored beside it."""
        if self._pipe is None:
            return
        try:
            self._pipe.write(f"{BLAME} {episode_id}\n")
            self._pipe.flush()
        except OSError:  # the guard died: nobody to tell
            pass

    def dismiss(self) -> None:
        """The batch settled its claims itself: the guard exits without touching the store.

        Waits for it briefly so it is reaped here, not left a zombie of whichever process
        adopts orphans (a container's PID 1 may be a worker that never reaps them).
        """
        if self._pipe is None:
            return
        pipe, self._pipe = self._pipe, None
        try:
            pipe.write(DONE + "\n")
            pipe.close()
        except OSError:  # the guard died: nothing to dismiss
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def main() -> int:
    """The guard process: read the job, wait for `done` or end-of-file, give back on the latter."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # ignored now: blocking them adds nothing
    line = sys.stdin.readline()
    if not line:
        return 0  # the batch died before it said what to guard: crash detection handles it
    job = json.loads(line)
    # Ready before it is needed: the process that stops a worker may stop us soon after.
    from podcastpile.store import EpisodeStore
    from podcastpile.net.urls import mask_secrets

    # No migration: the batch that started us opened (and migrated) this database already.
    store = EpisodeStore.open_url(job["database_url"], migrate=False, max_attempts=job["max_attempts"],
                                  archive_required=False)
    held = {episode_id: token for episode_id, token in job["claims"]}
    blamed: set[int] | None = None  # until the batch names one: every episode in progress
    for line in sys.stdin:
        word, _, argument = line.strip().partition(" ")
        if word == DONE:
            # Nothing to flush or close: skip the interpreter's teardown (0.2-0.9 s with SQLAlchemy
            # loaded, measured on a busy machine), which the batch would wait for in dismiss().
            os._exit(0)
        if word == BLAME and argument.isdigit():
            blamed = {int(argument)}
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            released, requeued = store.give_back_abandoned(held, blamed=blamed)
            break
        except Exception as error:  # the database is away: keep trying a while
            if time.monotonic() > deadline:
                _say(f"could not give back the episodes of process {job['owner']}: {mask_secrets(str(error))}")
                return 1
            time.sleep(1.0)
    if released or requeued:
        _say(f"process {job['owner']} died holding episodes: {released} not started given back, "
             f"{requeued} in progress requeued")
    store.close()
    return 0


def _say(message: str) -> None:
    """One line on stderr (the worker's log, or the terminal); a closed pipe is not an error."""
    try:
        print(f"claim guard: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
