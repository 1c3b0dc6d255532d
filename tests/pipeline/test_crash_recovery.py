"""Crash recovery as an operator meets it: the GPU worker and its flow run SIGKILLed mid-batch.

Real Prefect server on PostgreSQL, `deployments/setup.sh` (deployments and the heartbeat
automation), real `prefect worker` processes on `cpu` (dispatch) and `gpu` (batches). With
the default 2-hour lease nothing but crash detection can bring the episodes back in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from podcastpile.cli.stopping import descendants
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests import postgres
from tests.loopback import LoopbackServer
from tests.pipeline.conftest import pipeline_environment
from tests.pipeline.test_worker_e2e import run
from tests.prefect_server import PREFECT, prefect_server


def stack_environment(prefect_env: dict[str, str], episodes_url: str) -> dict[str, str]:
    """The environment workers and setup run with: Prefect's, the pipeline's, the venv on PATH."""
    return {
        **os.environ, **prefect_env, **pipeline_environment(episodes_url),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


# Runs the command after it with SIGINT ignored, as a script's background job (`prefect worker
# start &`, a make recipe) starts a worker: one SIGTERM must stop it all the same (a plain Prefect
# worker stops by sending itself SIGINT; deployments/worker.py makes that SIGINT count). exec keeps
# the pid: the Popen's pid is the worker's.
AS_A_BACKGROUND_JOB = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])",
]


def start_worker(pool: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A plain `prefect worker start` on `pool`, signalled as an operator's would be."""
    return subprocess.Popen(
        [*AS_A_BACKGROUND_JOB, PREFECT, "worker", "start", "--pool", pool, "--limit", "4" if pool == "cpu" else "1"],
        cwd=log.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def kill_tree(process: subprocess.Popen) -> None:
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def test_sigkilled_worker_tree_mid_batch_is_recovered_without_a_hand(
    tmp_path: Path, slow_host: LoopbackServer, conversation: dict
) -> None:
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(tmp_path) as prefect_env:
        env = stack_environment(prefect_env, episodes_url)
        env.pop("JOB_TIMEOUT_HOURS", None)  # the default 2 h lease: expiry cannot rescue anything
        run(["bash", "deployments/setup.sh"], env)
        engine = make_engine(episodes_url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        store.add([NewEpisode(slow_host.url(f"/ep/show-{i}.wav"), language="en") for i in range(3)])

        cpu = start_worker("cpu", env, tmp_path / "cpu.log")
        gpu = start_worker("gpu", env, tmp_path / "gpu.log")
        try:
            deadline = time.monotonic() + 240
            while not any(row.status == "processing" for row in store.list()):
                assert time.monotonic() < deadline, (tmp_path / "gpu.log").read_text()[-3000:]
                time.sleep(0.5)
            held = [row for row in store.list() if row.status in ("assigned", "processing")]
            run_id = held[0].claimed_by_run
            assert run_id and all(row.claimed_by_run == run_id for row in held)
            kill_tree(gpu)
            killed_at = time.monotonic()

            replacement = start_worker("gpu", env, tmp_path / "gpu-2.log")
            try:
                while not all(row.status == "completed" for row in store.list()):
                    assert time.monotonic() - killed_at < 300, (
                        [(r.status, r.error_code) for r in store.list()],
                        (tmp_path / "cpu.log").read_text()[-3000:])
                    time.sleep(2)
            finally:
                kill_tree(replacement)
        finally:
            kill_tree(cpu)

        for row in store.list():
            assert store.result(row.id)["turns"], row.id
            assert [(t["speaker"], t["text"]) for t in store.result(row.id)["turns"]] == conversation["truth"]
            assert row.claimed_by_run != run_id  # finished by the new run
        assert sorted(row.attempts for row in store.list() if row.id in {h.id for h in held}) == [2] * len(held)
        state = httpx.get(f"{prefect_env['PREFECT_API_URL']}/flow_runs/{run_id}").json()["state"]
        assert state["type"] == "CRASHED", state
        engine.dispose()


def test_one_sigterm_to_ppcli_worker_releases_unfinished_episodes_and_exits(
    tmp_path: Path, slow_host: LoopbackServer
) -> None:
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(tmp_path) as prefect_env:
        env = stack_environment(prefect_env, episodes_url)
        run(["bash", "deployments/setup.sh"], env)
        engine = make_engine(episodes_url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        store.add([NewEpisode(slow_host.url(f"/ep/stop-{i}.wav"), language="en") for i in range(4)])
        cpu = start_worker("cpu", env, tmp_path / "cpu.log")
        log = (tmp_path / "ppcli-worker.log").open("w")
        worker = subprocess.Popen([sys.executable, "-m", "podcastpile.cli", "worker", "--grace", "30"],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not any(row.status == "completed" for row in store.list()):
                assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "ppcli-worker.log").read_text()[-3000:]
                time.sleep(0.5)
            worker.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            worker.wait(timeout=60)
            assert time.monotonic() - signalled < 35  # the documented bound: --grace, plus a little
            assert worker.returncode == 0
            statuses = [row.status for row in store.list()]
            assert "completed" in statuses and set(statuses) <= {"completed", "pending"}, statuses
            assert all(row.lease_token is None for row in store.list())
            assert not [pid for pid in descendants(worker.pid)], "no flow run may outlive the worker"
        finally:
            if worker.poll() is None:
                kill_tree(worker)
            kill_tree(cpu)
            log.close()
        engine.dispose()

