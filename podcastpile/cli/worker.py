"""`ppcli worker`: Prefect workers on the GPU pool, one per GPU, that stop the way operators expect.

Each worker is a `prefect worker start --pool gpu --type podcastpile --limit 1` child (one batch at a time),
with `CUDA_VISIBLE_DEVICES` set to its GPU and its own name (`host-gpu0`, …), so the pool,
the UI and every claim say which GPU took what. One SIGTERM or Ctrl+C stops their flow runs
gracefully (unfinished episodes are released), then the workers; a second kills everything
(see `supervise.py`). Before starting, the manager is asked whether it answers and accepts the
worker password, so a wrong address or password is one clear line and exit 2. The manager and
the password are found by the rule every command follows (`podcastpile.prefect_api`); without
-m, MANAGER_URL or PREFECT_API_URL, the manager on this machine at PORT.
Use it as a container's entrypoint or a systemd unit's ExecStart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from deployments.allowlist import WORKER_TYPE, Allowlist, AllowlistError
from deployments.versions import ALLOW_MISMATCH, HINT
from podcastpile.cli.application import app
from podcastpile.cli.common import EXIT_SETUP, fail, settings
from podcastpile.cli.display import tell
from podcastpile.cli.manager_api import ManagerProblem, check_manager
from podcastpile.cli.supervise import Supervisor, WorkerChild, note
from podcastpile.cli.worker_code import pool_type_problem, shadowing_copy, version_problem
from podcastpile.machine import list_gpus
from podcastpile.prefect_api import find_prefect_api
from podcastpile.store import normalize_language

PREFECT = str(Path(sys.executable).with_name("prefect"))


@app.command()
def worker(
    manager: Annotated[str | None, typer.Option("--manager", "-m", help="Manager URL, e.g. http://manager:8000 (default: MANAGER_URL, else PREFECT_API_URL, else the manager on this machine at PORT).")] = None,
    worker_id: Annotated[str | None, typer.Option("--id", "-i", help="Worker name (default: WORKER_ID, i.e. the hostname); with several GPUs each worker is ID-gpuN.")] = None,
    password: Annotated[str | None, typer.Option("--password", "-p", help="Worker password (default: WORKER_PASSWORD, else PREFECT_API_AUTH_STRING). Prefer the setting: a command line is visible to every user of the machine.")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs to run a worker on each, e.g. 0,1,3 (CUDA_VISIBLE_DEVICES numbering).")] = None,
    all_gpus: Annotated[bool, typer.Option("--all-gpus", help="One worker per GPU this machine has.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Process one batch (per worker), then exit: for scripts and cron.")] = False,
    languages: Annotated[str | None, typer.Option("--languages", help="Claim only episodes in these languages, e.g. en,es (default: WORKER_LANGUAGES, i.e. all).")] = None,
    pool: Annotated[str | None, typer.Option(help="Work pool (default: WORK_POOL, i.e. gpu).")] = None,
    grace: Annotated[float, typer.Option(min=0, help="Seconds a stopping worker gives its runs to release their episodes.")] = 60.0,
    limit: Annotated[int, typer.Option(min=1, help="Flow runs each worker runs at once (a batch wants a whole GPU: keep 1 on the gpu pool).")] = 1,
    ca: Annotated[str | None, typer.Option("--ca", metavar="FILE", help="CA certificates (PEM) to verify an https:// manager with, here and in every flow run (default: TLS_CA_FILE, else this machine's CAs and certifi's).")] = None,
    allow_version_mismatch: Annotated[bool, typer.Option("--allow-version-mismatch", help="Run the manager's deployments even when they were made by another code version than this worker's (a warning instead of refused runs).")] = False,
) -> None:
    """Run Prefect workers that take one batch at a time; SIGTERM/Ctrl+C once stops them cleanly."""
    config = settings()
    try:  # the workers' allowlist: a broken prefect.yaml is one line here, not a traceback per worker
        allowlist = Allowlist.from_project()
    except AllowlistError as error:
        fail(f"cannot start workers: {error}", code=EXIT_SETUP)
    copy = shadowing_copy(Path.cwd())
    if copy is not None:
        fail(f"cannot start workers in {Path.cwd()}: it holds {copy}/, a copy of Podcast Pile's code that flow runs "
             "would import instead of the installed one; start the worker in another directory", code=EXIT_SETUP)
    devices = _devices(gpus, all_gpus)
    wanted = _languages(languages) if languages is not None else config.worker_languages
    api = find_prefect_api(config, manager=manager or config.manager_url, password=password, ca=ca, guess_local=True)
    assert api is not None  # guess_local: there is always one
    try:
        check_manager(api)
    except ManagerProblem as problem:
        message = str(problem)
        if api.guessed and problem.no_manager:  # e.g. `ppcli manager -p 8870`, or another service on PORT
            message += f" (no -m given, so this machine at PORT={config.port}; name the manager with -m http://HOST:PORT)"
        fail(message, code=EXIT_SETUP)
    try:
        mismatch = version_problem(api, pool or config.work_pool, allowlist)
    except ManagerProblem as problem:
        fail(str(problem), code=EXIT_SETUP)
    if mismatch is not None and not allow_version_mismatch:
        fail(f"{mismatch}: its runs would be refused; {HINT}", code=EXIT_SETUP)
    if mismatch is not None:
        tell("warning", f"{mismatch}: running its deployments anyway (--allow-version-mismatch)", style="yellow")
    foreign_pool = pool_type_problem(api, pool or config.work_pool)
    if foreign_pool is not None:
        tell("warning", foreign_pool, style="yellow")

    explicit = worker_id is not None or "worker_id" in config.model_fields_set
    names = worker_names(worker_id or config.worker_id, explicit=explicit, gpus=devices)
    # The workers' Prefect clients (and their flow runs) talk to the API checked above, with
    # the same credentials, whatever this machine's own Prefect profile says.
    base = {**os.environ, **api.client_environment(), "WORKER_LANGUAGES": wanted}
    if allow_version_mismatch:  # for the Prefect workers' per-run check (deployments/worker.py)
        base[ALLOW_MISMATCH] = "1"
    supervisor = Supervisor([], grace=grace, once=once, api=api)
    # Handlers first: a signal while workers start must stop the ones already started. A caught
    # SIGINT also starts each child with SIGINT at its default, where an ignored one (`ppcli
    # worker &` in a script) would be inherited: a Prefect worker stops on SIGTERM by sending
    # itself SIGINT, so it would never stop and the stop would wait out --grace.
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    for index, name in enumerate(names):
        device = devices[index] if devices is not None else None
        env = {**base, "WORKER_ID": name}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
            if config.device.startswith("cuda:"):
                env["DEVICE"] = "cuda"  # the one GPU it sees is cuda:0 now
        # --type: this project's worker class whatever type the pool has on the server, so a
        # pool made again by someone holding the API still runs only this checkout's flows.
        command = [PREFECT, "worker", "start", "--pool", pool or config.work_pool, "--type", WORKER_TYPE,
                   "--limit", str(limit), "--name", name]
        note(f"worker {name}" + (f" on GPU {device}" if device is not None else "")
             + f" (pool {pool or config.work_pool}, manager {api.address}"
             + (f", languages {wanted}" if wanted else "") + (", one batch" if once else "") + ")")
        supervisor.workers.append(WorkerChild(name, subprocess.Popen(command, env=env, start_new_session=True)))
        if supervisor.signals:
            break
    raise typer.Exit(supervisor.run())


def worker_names(base: str, *, explicit: bool, gpus: list[int] | None) -> list[str]:
    """One name per worker: `base` without --gpus; `base-gpuN` per GPU, except an explicit
    id with a single GPU, which is used as it is."""
    if gpus is None or (explicit and len(gpus) == 1):
        return [base]
    return [f"{base}-gpu{gpu}" for gpu in gpus]


def _devices(gpus: str | None, all_gpus: bool) -> list[int] | None:
    """The GPUs to run workers on, None for one worker that sees whatever the machine has."""
    if gpus is not None and all_gpus:
        fail("use --gpus or --all-gpus, not both", code=EXIT_SETUP)
    if all_gpus:
        found = list_gpus()
        if not found:
            fail("--all-gpus: no GPU found (nvidia-smi -L lists none, torch sees none); "
                 "run without it for one CPU worker", code=EXIT_SETUP)
        return found
    if gpus is None:
        return None
    try:
        listed = [int(part) for part in gpus.split(",") if part.strip()]
    except ValueError:
        fail(f"--gpus takes GPU numbers separated by commas, e.g. 0,1,3; not {gpus!r}", code=EXIT_SETUP)
    if not listed or min(listed) < 0 or len(set(listed)) != len(listed):
        fail(f"--gpus takes distinct GPU numbers separated by commas, e.g. 0,1,3; not {gpus!r}", code=EXIT_SETUP)
    return listed


def _languages(value: str) -> str:
    """--languages normalized as WORKER_LANGUAGES holds them (`EN, pt_BR` → `en,pt-br`)."""
    try:
        codes = [normalize_language(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        fail(f"--languages: {error}", code=EXIT_SETUP)
    return ",".join(code for code in codes if code)

