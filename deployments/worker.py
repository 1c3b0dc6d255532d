"""The `podcastpile` worker type: a Prefect process worker that runs only this checkout's flows.

"This checkout" is the installed package on a machine without one (`pip install
podcastpile[worker]`): its prefect.yaml is packaged, and its runs start in the directory the
worker was started in. A run of a deployment the manager made with another code version is
refused too, unless the worker allows it (deployments/versions.py).

`ppcli setup` gives both pools this type and `ppcli worker` starts `prefect worker start
--type podcastpile`, so a worker never runs a flow run that is not one of prefect.yaml's
deployments (deployments/allowlist.py): anything else on its pool ends in a `Failed` state
named `Refused`, with the reason as its message, before any step or code of it runs. An
allowed run is started from a configuration this worker builds from its own checkout (the
engine command, the checkout as working directory, the entrypoint's absolute path in
`PREFECT__FLOW_ENTRYPOINT`, the environment of deployments/gpu-pool.json), never from the
pool's job template or the deployment's pull steps, which whoever holds the API can change
between the check and the start. Crash and cancellation hooks load the flow the same way.

Registered with Prefect through the `prefect.collections` entry point (pyproject.toml), so a
plain `prefect worker start --pool gpu --type podcastpile` runs this class too. Never without
`--type`: Prefect then takes the type from the pool on the server, which whoever holds the
password can delete and make again as `process` (Prefect's worker that runs anything).

It leans on the runner internals of Prefect's own process worker (the executor context and
the engine starter), hence pyproject.toml pins Prefect's minor version.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.flows import load_flow_from_entrypoint
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle
from prefect.runner._starter_engine import EngineCommandStarter
from prefect.states import Failed
from prefect.utilities.processutils import command_to_string, get_sys_executable
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from deployments.allowlist import ROOT, WORKER_TYPE, AllowedDeployment, Allowlist, is_checkout
from deployments.versions import HINT, mismatch_allowed, version_mismatch
from deployments.wake import PollGate
from podcastpile.version import code_version

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.flows import Flow

REFUSED = "Refused"  # the name of a refused run's Failed state: `ppcli stats` counts them
JOB_TEMPLATE = ROOT / "deployments" / "gpu-pool.json"
log = logging.getLogger(__name__)


def _stoppable_by_sigterm() -> None:
    """Give an inherited ignored SIGINT back its KeyboardInterrupt, so one SIGTERM stops this worker.

    `prefect worker start` stops on SIGTERM by sending itself SIGINT with SIGINT's handler put back
    as it found it. A worker started as a background job of a script (`prefect worker start &`,
    `make` recipes, some init scripts) inherits SIGINT ignored, and then that SIGINT does nothing:
    the worker ignores `docker stop`/`systemctl stop` until their SIGKILL (measured: one SIGTERM,
    still running 3 s later; the second SIGTERM is a SIGKILL that leaves its runs for crash
    detection). Prefect loads this class before it installs its handlers, so this runs first.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_stoppable_by_sigterm()


class RunRefused(RuntimeError):
    """A flow run this worker does not run; the message says why."""


def job_template() -> dict[str, Any]:
    """The pools' base job template (deployments/gpu-pool.json)."""
    return json.loads(JOB_TEMPLATE.read_text())


def run_directory() -> Path:
    """Where flow runs start: the checkout, as always; for an installed package, the directory the
    worker was started in (its .env, relative paths), not site-packages."""
    return ROOT if is_checkout() else Path.cwd()


def run_environment() -> dict[str, str]:
    """The environment every flow run gets on top of the worker's: the template's, and for an
    installed package PYTHONSAFEPATH, so `python -m prefect.engine` in the run directory imports
    the installed code and not a copy of it lying there (`ppcli worker` refuses such a directory:
    Prefect's loader still looks there while it imports the flow's module)."""
    environment = template_environment()
    if not is_checkout():
        environment["PYTHONSAFEPATH"] = "1"
    return environment


def template_environment() -> dict[str, str]:
    """The environment every flow run gets on top of the worker's (the template's default)."""
    default = job_template()["variables"]["properties"]["env"].get("default") or {}
    return {str(key): str(value) for key, value in default.items() if value is not None}


class PodcastPileWorker(ProcessWorker):
    """A process worker that refuses every run that is not one of this checkout's deployments."""

    type = WORKER_TYPE
    _description = "Runs only the Podcast Pile deployments of the worker's own checkout (prefect.yaml)."
    _display_name = "Podcast Pile"

    def __init__(self, *args: Any, allowlist: Allowlist | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read once: a checkout updated under a running worker is picked up by restarting it,
        # like the code it runs.
        self.allowlist = allowlist or Allowlist.from_project()
        self.code_version = code_version()
        self.run_directory = run_directory()  # read at start: the worker's own cwd may not stay
        self.poll_gate = PollGate.from_environment()  # the manager's CPU worker: asks when woken

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Prefect's poll; with a wake file (deployments/wake.py) only when woken or idle long enough."""
        if self.poll_gate is not None and not self.poll_gate.due():
            return []
        return await super().get_and_submit_flow_runs()

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        return job_template()

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Run `flow_run` from this checkout if it is one of its deployments; else refuse it."""
        task_status = task_status or anyio.TASK_STATUS_IGNORED
        deployment = None
        if flow_run.deployment_id is not None:
            deployment = await self.client.read_deployment(flow_run.deployment_id)
        allowed = self.allowlist.match(deployment and deployment.model_dump(mode="json"),
                                       flow_run.job_variables, flow_run.parameters)
        if not isinstance(allowed, str):
            allowed = self._check_version(flow_run, deployment, allowed)
        if isinstance(allowed, str):
            await self._refuse(flow_run, allowed)
            task_status.started(RunRefused(allowed))  # type: ignore[arg-type]
            return ProcessWorkerResult(status_code=0, identifier="refused")
        trusted = await self._trusted_configuration(flow_run, deployment, allowed, configuration)
        return await self._start(flow_run, allowed, trusted, task_status)

    def _check_version(self, flow_run: FlowRun, deployment: DeploymentResponse | None,
                       allowed: AllowedDeployment) -> AllowedDeployment | str:
        """`allowed`, or why its run is refused: the manager deployed another code version
        (deployments/versions.py); with --allow-version-mismatch only a warning in the run's log."""
        mismatch = version_mismatch(deployment.version if deployment else None, self.code_version)
        if mismatch is None:
            return allowed
        if mismatch_allowed(os.environ):
            self.get_flow_run_logger(flow_run).warning("%s (running it: --allow-version-mismatch)", mismatch)
            return allowed
        return f"{mismatch}: {HINT}"

    async def _refuse(self, flow_run: FlowRun, reason: str) -> None:
        message = f"refused by worker {self.name}: {reason}"
        self.get_flow_run_logger(flow_run).error(message)
        await self.client.set_flow_run_state(flow_run.id, Failed(name=REFUSED, message=message), force=True)

    async def _trusted_configuration(
        self, flow_run: FlowRun, deployment: DeploymentResponse | None, allowed: AllowedDeployment,
        resolved: ProcessJobConfiguration,
    ) -> ProcessJobConfiguration:
        """The run's configuration from this checkout; of what the server resolved only the
        labels and the name are kept (they name things, they run nothing)."""
        configuration = ProcessJobConfiguration(
            command=command_to_string([get_sys_executable(), "-m", "prefect.engine"]),
            env={**run_environment(), "PREFECT__FLOW_ENTRYPOINT": allowed.local_entrypoint()},
            working_dir=self.run_directory, labels=resolved.labels, name=resolved.name, stream_output=resolved.stream_output,
        )
        flow = await self.client.read_flow(flow_run.flow_id)
        configuration.prepare_for_flow_run(
            flow_run, deployment=deployment, flow=flow, work_pool=self.work_pool,
            worker_name=self.name, worker_id=self.backend_id,
        )
        return configuration

    async def _start(
        self,
        flow_run: FlowRun,
        allowed: AllowedDeployment,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int],
    ) -> ProcessWorkerResult:
        """ProcessWorker.run's path for a configured command, with hooks loading this
        checkout's flow instead of running the deployment's pull steps in the worker."""
        entrypoint = allowed.local_entrypoint()

        async def local_flow(_: FlowRun) -> Flow[..., Any]:
            return await anyio.to_thread.run_sync(load_flow_from_entrypoint, entrypoint)

        execution: FlowRunExecutionResult | None = None
        async with FlowRunExecutorContext() as context:
            starter = EngineCommandStarter(
                command=configuration.command, cwd=Path(configuration.working_dir or self.run_directory),
                env=configuration.env,
                entrypoint=entrypoint, stream_output=configuration.stream_output,
                control_channel=context.control_channel,
            )
            executor = context.create_executor(flow_run, starter, resolve_flow=local_flow, propose_submitting=False)

            async def execute(*, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            async with anyio.create_task_group() as group:
                handle = await group.start(execute)
                if handle.pid is None:
                    raise RuntimeError("Flow run process has no PID")
                task_status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(status_code=execution.status_code, identifier=str(execution.handle.pid))
