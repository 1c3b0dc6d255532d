"""A GPU machine without a checkout: the project's wheel installed in a fresh virtual environment,
`ppcli worker` started in an empty directory.

The wheel is the one a manager publishes (deployments/wheel_index.py: built from this checkout,
served behind the password), installed by pip from its URL without its dependencies into a new venv,
which then reuses the test environment's site-packages (a .pth file, added after the install so
pip never sees the checkout's editable install) for Prefect, NeMo and the rest: fast, offline,
and every module of this project imported from the venv, which each test checks. The end-to-end
test runs a `ppcli manager` from the checkout and the installed worker on one batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.applications import Starlette

from deployments.versions import fleet_mismatch, mismatch_allowed, version_mismatch
from deployments.wheel_index import WheelPublisher, create_wheel_app, wheel_filename, with_wheel_index
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.version import code_version
from tests.manager import ROOT, Manager
from tests.pipeline.conftest import AudioHost, conversation, pipeline_environment  # noqa: F401  (a fixture)
from tests.prefect_server import busy_retried, free_port
from tests.processes import stop_tree
from tests.service.test_login_limit import serving

PACKAGES = ("podcastpile", "flows", "tasks", "deployments")


@dataclass(frozen=True)
class Installed:
    """The venv holding the wheel, and how to run its commands as an operator would."""

    venv: Path
    site: Path  # the venv's site-packages, where the wheel's packages are

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def ppcli(self) -> str:
        return str(self.venv / "bin" / "ppcli")

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this environment) with the venv's commands first and nothing that
        points Python back at the checkout."""
        env = {key: value for key, value in (base or os.environ).items()
               if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=self.env(env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout in a new venv that borrows this one's dependencies."""
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    quiet = {"capture_output": True, "text": True, "timeout": 300}
    made = subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                           str(venv)], **quiet)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # The manager's routes for its wheel, served here (no Prefect needed to serve a file).
    publisher = WheelPublisher(ROOT, code_version(), tmp / "wheels", delay=0)
    publisher.get(wait=300)  # built before pip asks: a busy machine's build outlasts a request's wait
    rest = Starlette()  # the rest of the manager: nothing here
    with serving(with_wheel_index(rest, create_wheel_app(publisher), "wheel-password")) as url:
        wheel_url = url.replace("://", "://worker:wheel-password@") + "/dist/" + wheel_filename(code_version())
        done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                               "--no-index", f"podcastpile @ {wheel_url}"], **quiet)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               **quiet).stdout.strip())
    # Dependencies from this environment, after the venv's own site-packages (which wins).
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # `ppcli worker` starts the `prefect` next to its Python: the dependency's script, for this venv.
    prefect = Path(sys.executable).with_name("prefect").read_text().split("\n", 1)[1]
    (venv / "bin" / "prefect").write_text(f"#!{python}\n{prefect}")
    (venv / "bin" / "prefect").chmod(0o755)
    return Installed(venv, site)


def inspect(installed: Installed, cwd: Path) -> dict:
    """What the installed code sees of itself, asked from `cwd`."""
    script = """
import json, podcastpile, flows, tasks, deployments
from deployments.allowlist import Allowlist, is_checkout, project_file
from deployments.worker import JOB_TEMPLATE, run_directory
from podcastpile.version import code_version
from importlib.metadata import entry_points
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (podcastpile, flows, tasks, deployments)},
    "project_file": str(project_file()), "checkout": is_checkout(),
    "deployments": {name: d.entrypoint for name, d in Allowlist.from_project().deployments.items()},
    "local_entrypoint": Allowlist.from_project().deployments["gpu"].local_entrypoint(),
    "job_template": JOB_TEMPLATE.is_file(), "run_directory": str(run_directory()),
    "code_version": code_version(),
    "worker_type": [e.value for e in entry_points(group="prefect.collections") if e.name == "podcastpile"],
}))
"""
    answer = installed.run([installed.python, "-c", script], cwd=cwd)
    assert answer.returncode == 0, answer.stderr[-3000:]
    return json.loads(answer.stdout)


def test_the_installed_code_reads_its_packaged_allowlist_from_any_directory(installed: Installed, tmp_path: Path) -> None:
    seen = inspect(installed, tmp_path)
    for package in PACKAGES:  # the wheel's, not the checkout's
        assert Path(seen["files"][package]).is_relative_to(installed.site), seen["files"]
    assert seen["project_file"] == str(installed.site / "deployments" / "prefect.yaml")
    assert seen["checkout"] is False
    ours = {d["name"]: d["entrypoint"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert seen["deployments"] == ours  # the packaged copy is the checkout's prefect.yaml
    assert seen["local_entrypoint"] == f"{installed.site}/flows/process.py:process_batch"
    assert seen["job_template"] and seen["worker_type"] == ["deployments.worker"]
    assert seen["run_directory"] == str(tmp_path)  # flow runs start where the worker was started
    # The wheel carries the version of the checkout it was built from: the manager's, here.
    assert seen["code_version"] == code_version() and "+g" in seen["code_version"]


def test_installed_ppcli_worker_help_from_an_empty_directory(installed: Installed, tmp_path: Path) -> None:
    answer = installed.run([installed.ppcli, "worker", "--help"], cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert answer.returncode == 0, answer.stderr
    assert "--allow-version-mismatch" in answer.stdout and "--manager" in answer.stdout


def test_the_installed_version_check_reports_another_deployment_version(installed: Installed, tmp_path: Path) -> None:
    script = ("from deployments.versions import version_mismatch\nfrom podcastpile.version import code_version\n"
              "print(version_mismatch('0.0.9+gdeadbeef00', code_version()))\n"
              "print(version_mismatch(code_version(), code_version()))")
    answer = installed.run([installed.python, "-c", script], cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == [
        f"the manager deployed code version 0.0.9+gdeadbeef00, this worker runs {code_version()}", "None"]


def test_a_directory_holding_a_copy_of_the_code_is_refused_in_one_line(installed: Installed, tmp_path: Path) -> None:
    """Prefect's flow loader looks in the run directory first: a copy there would run instead."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("")
    answer = installed.run([installed.ppcli, "worker", "-m", "http://127.0.0.1:9"], cwd=tmp_path)
    assert answer.returncode == 2, answer.stderr
    assert answer.stderr.strip().count("\n") == 0 and "tasks/" in answer.stderr and "another directory" in answer.stderr


def test_version_policy() -> None:
    ours = "0.1.0+gabc.dirty"
    assert version_mismatch(ours, ours) is None
    assert version_mismatch(None, ours) == f"the manager deployed code version unknown, this worker runs {ours}"
    assert fleet_mismatch({}, ours) is None  # no deployments yet: nothing to compare
    assert fleet_mismatch({"gpu": ours, "adhoc": ours}, ours) is None
    assert fleet_mismatch({"gpu": "0.2.0", "adhoc": ours}, ours) == f"the manager deployed code version 0.2.0, this worker runs {ours}"
    assert mismatch_allowed({"PODCASTPILE_ALLOW_VERSION_MISMATCH": "1"})
    assert not mismatch_allowed({}) and not mismatch_allowed({"PODCASTPILE_ALLOW_VERSION_MISMATCH": "0"})


@pytest.fixture
def audio_host(conversation: dict) -> Iterator[AudioHost]:  # noqa: F811
    host = AudioHost(conversation["wav"].read_bytes())
    with host.server:
        yield host


def test_an_installed_worker_runs_a_batch_for_a_manager_from_a_checkout(
    installed: Installed, tmp_path: Path, audio_host: AudioHost
) -> None:
    """The manager (this checkout) deploys at its code version. The installed worker, in an empty
    directory: stamped with another version, it stops in one line; at the manager's version it
    starts, and refuses a run once the deployment's version changes; with another version and
    --allow-version-mismatch it runs a batch, and the episode records the installed code's
    version: the run used the wheel, not the checkout."""
    episodes_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))},
        **pipeline_environment(episodes_url),
        "PREFECT_HOME": str(tmp_path / "manager-home"), "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "DATASET_DIR": str(tmp_path / "dataset"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    engine = make_engine(episodes_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    stamp = installed.site / "podcastpile" / "BUILD_VERSION"
    manager = Manager(env, tmp_path / "manager.log", free_port())
    workers: list[subprocess.Popen] = []
    # The GPU machine: no episode database (the manager's block), its own Prefect home, an
    # empty directory.
    gpu_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    gpu_env["PREFECT_HOME"] = str(tmp_path / "gpu-home")
    gpu_dir = tmp_path / "gpu-machine"
    gpu_dir.mkdir()

    def start_worker(name: str, *options: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        worker = subprocess.Popen([installed.ppcli, "worker", "-m", manager.url, "-i", name, *options], cwd=gpu_dir,
                                  env=installed.env(gpu_env), stdout=log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        workers.append(worker)
        return worker, log

    try:
        manager.wait_ready()
        other = "0.1.0+installed.test"
        stamp.write_text(other + "\n")
        refused = installed.run([installed.ppcli, "worker", "-m", manager.url], cwd=gpu_dir, env=gpu_env)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().count("\n") == 0, refused.stderr
        assert f"the manager deployed code version {code_version()}, this worker runs {other}" in refused.stderr

        # The manager's version: it starts; a deployment version changed under it refuses the run.
        stamp.write_text(code_version() + "\n")
        worker, log = start_worker("matching-box")
        with httpx.Client(base_url=manager.api, timeout=30) as api:
            wait_until(lambda: "matching-box" in online_workers(api), worker, log)
            (gpu,) = api.post("/deployments/filter", json={"deployments": {"name": {"any_": ["gpu"]}}}).json()
            set_version(api, gpu["id"], "0.0.1+gold")
            store.add([NewEpisode(audio_host.url("good-installed.wav"), language="en")])
            wait_until(lambda: refused_runs(api), worker, log)
            (message,) = {run["state"]["message"] for run in refused_runs(api)}
            assert "refused by worker matching-box" in message
            assert f"the manager deployed code version 0.0.1+gold, this worker runs {code_version()}" in message
            stop_tree(worker, grace=30)
            set_version(api, gpu["id"], code_version())
        assert store.list()[0].status == "pending"

        stamp.write_text(other + "\n")
        worker, log = start_worker("installed-box", "--once", "--allow-version-mismatch")
        deadline = time.monotonic() + 420  # dispatch starts a batch for the online worker
        while worker.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        assert worker.poll() == 0, log.read_text()[-5000:]
        assert "warning: the manager deployed code version" in log.read_text()
    finally:
        stamp.write_text(code_version() + "\n")
        for worker in workers:
            stop_tree(worker, grace=30)
        stop_tree(manager.process, grace=60)
        print(manager.output()[-3000:])
    (row,) = store.list()
    assert row.status == "completed", (row.status, row.error)
    assert row.worker_id.startswith("installed-box/") and row.code_version == other
    assert not list(gpu_dir.glob("*.db"))  # the run used the manager's database, not one of its own
    engine.dispose()


def online_workers(api: httpx.Client) -> set[str]:
    answer = api.post("/work_pools/gpu/workers/filter", json={})
    return {worker["name"] for worker in answer.json() if worker.get("status") == "ONLINE"}


def refused_runs(api: httpx.Client) -> list[dict]:
    runs = api.post("/flow_runs/filter", json={}).json()
    return [run for run in runs if (run.get("state") or {}).get("name") == "Refused"]


def wait_until(condition: Callable[[], object], worker: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-4000:]}"
        time.sleep(1)


def set_version(api: httpx.Client, deployment_id: str, version: str) -> None:
    """PATCH a deployment's version (a busy SQLite Prefect database's 503 is tried again)."""
    busy_retried(lambda: api.patch(f"/deployments/{deployment_id}", json={"version": version}))
