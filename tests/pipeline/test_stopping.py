"""One SIGTERM stops gracefully: not-started episodes go back to the queue within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podcastpile.cli.stopping import descendants
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests import postgres
from tests.loopback import LoopbackServer
from tests.pipeline.conftest import pipeline_environment
from tests.pipeline.test_crash_recovery import kill_tree, stack_environment, start_worker
from tests.pipeline.test_worker_e2e import run
from tests.prefect_server import prefect_server


def test_one_sigterm_to_ppcli_process_releases_unfinished_episodes(
    tmp_path: Path, slow_host: LoopbackServer
) -> None:
    database = f"sqlite:///{tmp_path / 'episodes.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(pipeline_environment(database), PREFECT_HOME=str(tmp_path / "prefect"), ALLOW_PRIVATE_ADDRESSES="true")
    urls = [slow_host.url(f"/ep/show-{i}.wav") for i in range(4)]
    log = tmp_path / "stderr.log"
    with log.open("w") as errors:  # a file, not a pipe: what it holds can be read while it runs
        process = subprocess.Popen(
            [sys.executable, "-m", "podcastpile.cli", "process", "--live", "--grace", "20", *urls], cwd=tmp_path,
            env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.DEVNULL, stderr=errors)
    engine = make_engine(database)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    deadline = time.monotonic() + 180
    while not any(row.status == "completed" for row in store.list()):
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
        process.wait(timeout=30)
        pytest.fail(f"still running 60 s after one SIGTERM:\n{log.read_text()[-12000:]}")
    stderr = log.read_text()
    assert time.monotonic() - signalled < 30, stderr[-3000:]
    assert process.returncode == 130, stderr[-2000:]
    assert "given back to the queue" in stderr and "Traceback" not in stderr
    if "exiting now" in stderr:  # the stop outlived --grace: the claim guard gives the episodes back
        print(stderr[-6000:])
    deadline = time.monotonic() + 15
    while any(row.lease_token for row in store.list()) and time.monotonic() < deadline:
        time.sleep(0.2)
    statuses = [row.status for row in store.list()]
    assert "completed" in statuses and set(statuses) <= {"completed", "pending"}, statuses
    assert all(row.lease_token is None for row in store.list())  # nothing left leased
    engine.dispose()


def test_ppcli_process_waits_for_episodes_another_process_holds(tmp_path: Path, slow_host: LoopbackServer) -> None:
    """Episodes held by another process are waited for (and said so), not reported as failures."""
    database = f"sqlite:///{tmp_path / 'episodes.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(pipeline_environment(database), ALLOW_PRIVATE_ADDRESSES="true", PREFECT_HOME=str(tmp_path / "prefect"))
    engine = make_engine(database)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    shared = [slow_host.url(f"/ep/shared-{i}.wav") for i in range(2)]
    store.add([NewEpisode(url) for url in shared])
    held = store.claim_batch("another-process", 2)  # as a concurrent `ppcli process` would
    own = slow_host.url("/ep/own.wav")
    log = tmp_path / "stderr.log"
    with log.open("w") as errors:
        run = subprocess.Popen([sys.executable, "-m", "podcastpile.cli", "process", "--live", *shared, own],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        deadline = time.monotonic() + 180
        while "episode 2: held by another-process (assigned); waiting for it" not in log.read_text():
            assert time.monotonic() < deadline and run.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert store.find(own).status == "completed"  # its own episode did not wait
        assert [store.get(c.episode_id).status for c in held] == ["assigned", "assigned"]
        store.release_claims(held)  # the other process gives them back (or finishes them)
        run.communicate(timeout=180)
    assert run.returncode == 0, log.read_text()[-3000:]
    assert [row.status for row in store.list()] == ["completed"] * 3
    engine.dispose()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _claim_guards(database_url: str) -> list[int]:
    """Live claim guards of this test's batches (found by the episode database in their environment)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"podcastpile.claimguard" in (proc / "cmdline").read_bytes() and \
                    database_url.encode() in (proc / "environ").read_bytes() and _alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_one_sigterm_to_a_plain_prefect_worker_gives_its_batch_back(
    tmp_path: Path, slow_host: LoopbackServer
) -> None:
    """`prefect worker start --pool gpu`, not `ppcli worker`: on one SIGTERM the Prefect 3.9
    worker SIGKILLs its flow run at once and exits; the batch's claim guard gives the episodes
    back: not started ones as released, the one in progress requeued with its attempt counted."""
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(tmp_path) as prefect_env:
        env = stack_environment(prefect_env, episodes_url)
        run(["bash", "deployments/setup.sh"], env)
        engine = make_engine(episodes_url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        store.add([NewEpisode(slow_host.url(f"/ep/plain-{i}.wav"), language="en") for i in range(4)])
        cpu = start_worker("cpu", env, tmp_path / "cpu.log")
        gpu = start_worker("gpu", env, tmp_path / "gpu.log")
        try:
            deadline = time.monotonic() + 240
            while not any(row.status == "completed" for row in store.list()):
                assert time.monotonic() < deadline and gpu.poll() is None, (tmp_path / "gpu.log").read_text()[-3000:]
                time.sleep(0.2)
            flow_runs = descendants(gpu.pid)
            assert flow_runs and _claim_guards(episodes_url), "a batch runs, guarded"
            held = {row.id for row in store.list() if row.status in ("assigned", "processing")}
            assert held, "the batch is mid-way"
            os.kill(gpu.pid, signal.SIGTERM)  # the worker only; its flow run lives in its own session
            signalled = time.monotonic()

            gpu.wait(timeout=60)
            assert time.monotonic() - signalled < 20, "the worker exits promptly"
            while any(row.status in ("assigned", "processing") for row in store.list()):
                # the claim guard's doing (see tests/test_claimguard.py for why the bound is loose)
                assert time.monotonic() - signalled < 45, [(r.id, r.status) for r in store.list()]
                time.sleep(0.1)
            back = time.monotonic() - signalled
            while any(_alive(pid) for pid in flow_runs) or _claim_guards(episodes_url):
                assert time.monotonic() - signalled < 50, "no flow run or guard outlives the stop"
                time.sleep(0.1)
            print(f"worker gone and {len(held)} episodes back {back:.1f} s after the SIGTERM")
        finally:
            if gpu.poll() is None:
                kill_tree(gpu)
            kill_tree(cpu)
        rows = {row.id: row for row in store.list()}
        assert {rows[i].status for i in held} == {"pending"}
        assert all(row.lease_token is None for row in rows.values())
        requeued = [i for i in held if rows[i].attempts == 1]  # the one in progress, if any, counts
        assert len(requeued) <= 1 and all(rows[i].error_code == "run-crashed" for i in requeued)
        assert sorted(rows[i].attempts for i in held if i not in requeued) == [0] * (len(held) - len(requeued))
        engine.dispose()
