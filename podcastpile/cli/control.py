"""The manager's control loops: a run of `archive`, `dispatch`, `export` or `stats` only when
there is work for it.

prefect.yaml schedules these four deployments (every 60 s, 30 s, hourly, 5 min), which is what
a plain Prefect setup (`prefect server start` + `ppcli setup` + workers) runs. But each run is
a flow run with its states, task runs, logs and some twenty events, whether or not anything
waits: an idle manager grew Prefect's database by 0.66 MB a minute (issue 23). So `ppcli
manager` pauses those schedules and asks the episode store instead, every CONTROL_CHECK_SECONDS
(a count over an index or the counters table: milliseconds), starting a run only when:

- archive: episodes wait for a capture and are due (not leased, not deferred); at most one new
  run a minute, as the schedule did (a run lasts up to 10 minutes and overlapping runs share the
  limits in the store);
- dispatch: episodes are ready (or leases expired, or dead runs hold episodes), and something
  changed since the last dispatch (the ready count, the leased count, the online GPU workers),
  or 5 minutes passed: a finished batch changes the counts, so its worker gets the next batch
  within one check; a new episode is dispatched within one check as well;
- export: episodes were completed since the last export, at most hourly, and the dataset's
  ledger says some are not in it yet (a batch that empties the queue starts an export itself,
  which usually published them already);
- stats: the store's counts changed, at most every 5 minutes, and otherwise hourly, so the
  dashboard still says the loops are alive and when each last looked (its parameter `loops`).

While a run they started is under way, the loops check every FOLLOW_SECONDS instead: an
episode an archive run has just captured is dispatched seconds later, not a check later. And a
run that found no work after all (another run took it first: it ends Completed with the message
"nothing to do", podcastpile/nothing_done.py) is deleted DISCARD_AFTER s after it is over: the
run list holds runs that did something.

Each run they create wakes the manager's CPU worker (`started`, deployments/wake.py), which
otherwise asks the server for runs only every 30 s: the run starts about a second later, and an
idle CPU worker costs the server two polls a minute instead of six.

Why loops in the manager rather than Prefect automations on events: the work is defined by the
store (an episode added by `ppcli create` or SQL, a deferral that expires at 03:00, a lease
that runs out), and most of those changes emit no event at all; a count is the one check that
sees them all. The loops cost one query per check and no Prefect writes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from podcastpile.cli.stack import absolute_location
from podcastpile.config import Settings
from podcastpile.nothing_done import NOTHING_DONE
from podcastpile.prefect_api import PrefectAPI
from podcastpile.runs import held_by_runs
from podcastpile.store import EpisodeStore
from podcastpile.store.archive import archive_queue_for
from podcastpile.store.exports import ExportLedger, dataset_key

# loop name -> (flow name, deployment name) in prefect.yaml
DEPLOYMENTS = {"archive": ("archive", "archive"), "dispatch": ("dispatch", "dispatch"),
               "export": ("export-dataset", "export"), "stats": ("stats", "stats")}
ARCHIVE_EVERY, DISPATCH_SAFETY, EXPORT_EVERY = 60.0, 300.0, 3600.0
# A run is PENDING from its worker's submission until its process starts the flow (seconds; a
# minute at worst on a loaded machine). One PENDING for STRANDED_SECONDS lost its process: its
# worker died in between (a manager restart kills the CPU worker and its children). Prefect
# never moves such a run on, and it holds its deployment's concurrency slot for good (the
# server keeps slot leases in memory, so a server restart forgets the lease but not the slot):
# one stranded dispatch run stopped all dispatching. Looked for every STRANDED_EVERY s.
STRANDED_SECONDS, STRANDED_EVERY = 180.0, 60.0
# A loop's run still RUNNING whose heartbeats (one every 30 s) stopped SILENT_SECONDS ago lost
# its process the same way, after it started. The heartbeat automation marks it crashed after
# 90 s, but misses a run whose 90 s ended while Prefect's database was down: such a dispatch run
# held the only slot, every later dispatch run was cancelled, and no batch was dispatched again
# (the chaos soak, CI). Dispatch is the backstop for batch runs (tasks/dispatch.py), nothing
# was for dispatch itself; the loops are, for their four deployments (a handful of runs).
SILENT_SECONDS = 300.0
HEARTBEAT = "prefect.flow-run.heartbeat"
STATS_EVERY, STATS_IDLE_EVERY, SCHEDULES_RECHECK = 300.0, 3600.0, 300.0
# Checks while a started run is under way (archive runs last up to 10 minutes): for at most
# FOLLOW_FOR s after its start, so a run that never starts (no CPU worker) does not keep the
# loops fast; FOLLOWED_MOST runs are followed at once (the oldest is let go beyond).
FOLLOW_SECONDS, FOLLOW_FOR, FOLLOWED_MOST = 2.0, 900.0, 50
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
# A run that did nothing is deleted this long after it ended, not at once: the server records
# its task runs from events it consumes a little later, and an event about a deleted run fails
# (a foreign key), is retried three times and dead-lettered: some 12,000 tracebacks in the
# manager's log in 30 minutes of the chaos soak, and the server's CPU with them.
DISCARD_AFTER = 120.0
# Waits before the retries of a call the server answered 503 (busy); the last answer stands.
BUSY_RETRIES = (0.5, 1.0, 2.0, 0.0)


@dataclass
class Loop:
    """What one loop last saw and did, for the log and the dashboard."""

    name: str
    checked_at: datetime | None = None
    found: str = "not checked yet"
    started_at: float | None = None  # monotonic time of its last run
    started: datetime | None = None
    runs: int = 0
    discarded: int = 0  # runs that found nothing to do, deleted
    seen: Any = None  # what the last run was started for (a fingerprint)

    def since_start(self) -> float:
        return math.inf if self.started_at is None else time.monotonic() - self.started_at

    def summary(self) -> dict[str, Any]:
        return {"checked_at": self.checked_at.isoformat(timespec="seconds") if self.checked_at else None,
                "found": self.found, "runs_started": self.runs, "runs_discarded": self.discarded,
                "last_run_at": self.started.isoformat(timespec="seconds") if self.started else None}


@dataclass
class ControlLoops:
    """The loops of one manager; `check()` once every CONTROL_CHECK_SECONDS."""

    api: PrefectAPI
    config: Settings
    say: Callable[[str], None] = print
    # Called after each run they create: the manager wakes its CPU worker (deployments/wake.py).
    started: Callable[[], None] | None = None
    loops: dict[str, Loop] = field(default_factory=lambda: {name: Loop(name) for name in DEPLOYMENTS})
    _ids: dict[str, str] = field(default_factory=dict)
    _followed: dict[str, tuple[str, float]] = field(default_factory=dict)  # run id -> (loop, started)
    _discard: dict[str, tuple[str, float]] = field(default_factory=dict)  # run id -> (loop, delete at)
    _store: EpisodeStore | None = None
    _schedules_checked: float = -math.inf
    _stranded_checked: float = -math.inf
    _last_problem: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Check every CONTROL_CHECK_SECONDS in a thread of its own: a check that waits (a store
        outage, a slow server) never delays the manager's reaction to a signal."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="control-loops", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop checking (waits `timeout` for a check under way) and close the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.wait_seconds())

    def wait_seconds(self) -> float:
        """Seconds until the next check: FOLLOW_SECONDS while a run started within FOLLOW_FOR s
        is followed (what it does may be work for another loop), else CONTROL_CHECK_SECONDS."""
        now = time.monotonic()
        if any(now - started < FOLLOW_FOR for _, started in self._followed.values()):
            return min(FOLLOW_SECONDS, self.config.control_check_seconds)
        return self.config.control_check_seconds

    def check(self) -> None:
        """Look at the store once and start the runs there is work for; never raises (a store
        or server outage is said once and tried again next time)."""
        try:
            if time.monotonic() - self._schedules_checked >= SCHEDULES_RECHECK:
                self.pause_schedules()
            if time.monotonic() - self._stranded_checked >= STRANDED_EVERY:
                self.crash_stranded_runs()
                self.crash_silent_runs()
            self._follow()
            self._discard_due()
            store = self._open_store()
            now = datetime.now(UTC)
            self._archive(store, now)
            self._dispatch(store, now)
            counts = store.stats()
            self._export(store, counts.by_status.get("completed", 0), now)
            self._stats((counts.total, tuple(sorted(counts.by_status.items()))), now)
            self._last_problem = None
        except Exception as error:  # noqa: BLE001 - the loops outlive any outage
            problem = f"control loops: {type(error).__name__}: {error}"
            if problem != self._last_problem:
                self.say(problem[:300] + "; trying again")
            self._last_problem = problem
            self.close()  # a fresh connection next time

    def close(self) -> None:
        """Close the store connection, if open."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def pause_schedules(self) -> None:
        """Pause the four deployments' schedules (the loops start their runs); again after a
        `ppcli setup` has deployed them anew."""
        for name in DEPLOYMENTS:
            deployment = self._http("GET", f"/deployments/{self._id(name)}")
            if deployment.get("paused"):
                continue
            self._http("PATCH", f"/deployments/{self._id(name)}", {"paused": True})
            # Pausing drops the future runs its schedule made, not one already due.
            due = self._http("POST", "/flow_runs/filter", {
                "deployments": {"id": {"any_": [self._id(name)]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 200})
            for run in due:
                self._http("DELETE", f"/flow_runs/{run['id']}")
        self._schedules_checked = time.monotonic()

    def crash_stranded_runs(self) -> list[str]:
        """Mark CRASHED the runs (of any deployment) PENDING for over STRANDED_SECONDS: their
        process is gone, and they hold a concurrency slot (a loop's deployment allows one run)
        or count as a batch waiting for a worker. Returns their ids."""
        pending = self._http("POST", "/flow_runs/filter", {
            "flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200})
        cutoff = datetime.now(UTC).timestamp() - STRANDED_SECONDS
        crashed = []
        for run in pending or []:
            if self._in_state_before(run, cutoff):
                self._crash(run, f"PENDING for over {STRANDED_SECONDS:g} s: the worker that submitted it went "
                                 "away before its process started (found by ppcli manager)")
                crashed.append(str(run["id"]))
        if crashed:
            self.say(f"control loops: {len(crashed)} runs stranded in PENDING marked crashed: {', '.join(crashed)}")
        self._stranded_checked = time.monotonic()
        return crashed

    def crash_silent_runs(self) -> list[str]:
        """Mark CRASHED the runs of the loops' deployments RUNNING for over SILENT_SECONDS with
        no heartbeat in the last SILENT_SECONDS: their process is gone, and they hold their
        deployment's concurrency slot. Returns their ids."""
        running = self._http("POST", "/flow_runs/filter", {
            "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}},
            "deployments": {"id": {"any_": [self._id(name) for name in DEPLOYMENTS]}}, "limit": 200})
        now = datetime.now(UTC)
        since = now.timestamp() - SILENT_SECONDS
        crashed = []
        for run in running or []:
            if not self._in_state_before(run, since):
                continue  # running for less than the window: it may not have beaten yet
            beats = self._http("POST", "/events/filter", {"limit": 1, "filter": {
                "occurred": {"since": datetime.fromtimestamp(since, UTC).isoformat(), "until": now.isoformat()},
                "event": {"name": [HEARTBEAT]}, "resource": {"id": [f"prefect.flow-run.{run['id']}"]}}})
            if not (beats or {}).get("events"):
                self._crash(run, f"No heartbeat for {SILENT_SECONDS:g} s: the process running it is gone "
                                 "(found by ppcli manager)")
                crashed.append(str(run["id"]))
        if crashed:
            self.say(f"control loops: {len(crashed)} silent runs marked crashed: {', '.join(crashed)}")
        return crashed

    @staticmethod
    def _in_state_before(run: dict[str, Any], cutoff: float) -> bool:
        """Whether `run` entered its current state before `cutoff` (a POSIX time)."""
        since = (run.get("state") or {}).get("timestamp")
        return bool(since) and datetime.fromisoformat(since).timestamp() <= cutoff

    def _crash(self, run: dict[str, Any], message: str) -> None:
        self._http("POST", f"/flow_runs/{run['id']}/set_state",
                   {"force": True, "state": {"type": "CRASHED", "message": message}})

    def _follow(self) -> None:
        """Let go of the followed runs that are over; delete those that found nothing to do."""
        if not self._followed:
            return
        # One request for all of them; a run missing from the answer was deleted (let go).
        found = self._http("POST", "/flow_runs/filter", {
            "flow_runs": {"id": {"any_": list(self._followed)}}, "limit": FOLLOWED_MOST})
        states = {str(run["id"]): run.get("state") or {} for run in found or []}
        for run_id, (name, _) in list(self._followed.items()):
            state = states.get(run_id)
            if state is not None and state.get("type") not in FINAL_STATES:
                continue
            if state and state.get("type") == "COMPLETED" and state.get("message") == NOTHING_DONE:
                self._discard[run_id] = (name, time.monotonic() + DISCARD_AFTER)
            del self._followed[run_id]

    def _discard_due(self) -> None:
        """Delete the runs that did nothing once DISCARD_AFTER has passed since they ended."""
        now = time.monotonic()
        for run_id, (name, due) in list(self._discard.items()):
            if due > now:
                continue
            # Forgotten only once deleted: a refused delete (a busy SQLite answers 503) raises
            # and is tried again at the next check instead of leaving the run behind.
            self._http("DELETE", f"/flow_runs/{run_id}", missing_ok=True)
            self.loops[name].discarded += 1
            del self._discard[run_id]

    # --- the loops ---------------------------------------------------------------------------------

    def _archive(self, store: EpisodeStore, now: datetime) -> None:
        loop = self._looked(self.loops["archive"], now)
        if not self.config.archives:
            loop.found = "ARCHIVE_MODE=off"
            return
        due = archive_queue_for(store, self.config).count_due()
        loop.found = f"{due:,} due for a capture"
        if due and loop.since_start() >= ARCHIVE_EVERY:
            self._start(loop, {})

    def _dispatch(self, store: EpisodeStore, now: datetime) -> None:
        loop = self._looked(self.loops["dispatch"], now)
        ready, leased = store.count_claimable(), store.count_leased()
        dead = (held_by_runs(store.leased_by_run(), self.api).dead or 0) if leased else 0
        loop.found = f"{ready:,} ready, {leased:,} leased" + (f", {dead:,} held by dead runs" if dead else "")
        if not ready and not dead:
            # Leases held by runs that look alive: a dispatch every DISPATCH_SAFETY all the same,
            # whose backstop (tasks/dispatch.py crash_silent_runs) finds a batch run that stopped
            # beating unnoticed by the automation. CI's soak: a batch killed while Prefect's
            # database was down held 6 episodes for 9 minutes, until other work started a dispatch.
            if leased and loop.since_start() >= DISPATCH_SAFETY:
                self._start(loop, {}, loop.seen)
            return
        seen = (ready, leased, dead, self._online_workers())
        if seen != loop.seen or loop.since_start() >= DISPATCH_SAFETY:
            self._start(loop, {}, seen)

    def _export(self, store: EpisodeStore, completed: int, now: datetime) -> None:
        loop = self._looked(self.loops["export"], now)
        loop.found = f"{completed:,} completed"
        if loop.seen is None:
            loop.seen = completed  # the manager's start: the hourly run comes when more complete
        if completed != loop.seen and loop.since_start() >= EXPORT_EVERY:
            # The export a batch starts when it empties the queue (tasks/export.py) may have
            # published them already: a run then would write nothing, and its process costs
            # the idle manager seconds of CPU. The ledger knows: one query (LIMIT 1; proving
            # nothing is pending walks the completed episodes), asked only when this hourly
            # condition holds, and once per change of the completed count after that.
            dataset = dataset_key(absolute_location(self.config.dataset_dir))
            if not ExportLedger(store.engine, dataset).has_pending():
                loop.seen, loop.found = completed, f"{completed:,} completed, all exported"
                return
            self._start(loop, {}, completed)

    def _stats(self, fingerprint: Any, now: datetime) -> None:
        loop = self._looked(self.loops["stats"], now)
        changed = fingerprint != loop.seen
        loop.found = "counts changed" if changed else "no change"
        if (changed and loop.since_start() >= STATS_EVERY) or loop.since_start() >= STATS_IDLE_EVERY:
            self._start(loop, {"loops": {name: other.summary() for name, other in self.loops.items()}}, fingerprint)

    # --- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _looked(loop: Loop, now: datetime) -> Loop:
        loop.checked_at = now
        return loop

    def _start(self, loop: Loop, parameters: dict[str, Any], seen: Any = None) -> None:
        run = self._http("POST", f"/deployments/{self._id(loop.name)}/create_flow_run", {"parameters": parameters})
        if isinstance(run, dict) and run.get("id"):
            self._followed[str(run["id"])] = (loop.name, time.monotonic())
            while len(self._followed) > FOLLOWED_MOST:
                del self._followed[next(iter(self._followed))]
        loop.started_at, loop.started, loop.runs, loop.seen = time.monotonic(), datetime.now(UTC), loop.runs + 1, seen
        if self.started is not None:
            self.started()

    def _online_workers(self) -> int:
        workers = self._http("POST", f"/work_pools/{self.config.work_pool}/workers/filter", {})
        return sum(1 for worker in workers if worker.get("status") == "ONLINE")

    def _id(self, name: str) -> str:
        if name not in self._ids:
            flow, deployment = DEPLOYMENTS[name]
            self._ids[name] = self._http("GET", f"/deployments/name/{flow}/{deployment}")["id"]
        return self._ids[name]

    def _open_store(self) -> EpisodeStore:
        if self._store is None:
            self._store = EpisodeStore.open(self.config)
        return self._store

    def _http(self, method: str, path: str, body: dict | None = None, missing_ok: bool = False) -> Any:
        """One call to the server's API; its JSON answer (None for none, or a 404 when `missing_ok`)."""
        import httpx

        verify = self.api.ssl_context() if self.api.url.startswith("https://") else True
        for pause in BUSY_RETRIES:
            answer = httpx.request(method, f"{self.api.url}{path}", json=body, headers=self.api.headers(),
                                   timeout=5, verify=verify)
            if answer.status_code != 503:
                break
            # A SQLite Prefect database answers 503 while another writer holds it (its
            # transaction rolled back: nothing was done): a moment later it goes through.
            time.sleep(pause)
        if answer.status_code == 404 and path.startswith("/deployments/"):
            self._ids.clear()  # deployed anew (ids change): look them up again next time
        if answer.status_code == 404 and missing_ok:
            return None
        answer.raise_for_status()
        return answer.json() if answer.content else None
