"""Make sure a Prefect server has everything the pipeline needs; safe to run again at any time.

`ppcli setup` (and `ppcli manager`, once its server is healthy) runs `setup()` on the server
it found by the rule every command follows (`podcastpile.prefect_api`), whatever Prefect's
own settings in this process name:
  1. the episode database, migrated;
  2. work pools: `gpu` (one batch per run) and `cpu` (archive, dispatch, export, stats), of
     the `podcastpile` worker type (deployments/worker.py: workers run only prefect.yaml's
     deployments) with the job template in gpu-pool.json;
  3. every deployment in prefect.yaml (`prefect deploy --all`);
  4. the automations in automations.yaml (crash detection), replaced by name;
  5. the episode database's connection as a SqlAlchemyConnector block, so GPU machines need
     only the manager's URL.
The Save Page Now limits need no Prefect concurrency limit: they are kept in the episode
database, where every run on every machine counts against the same window (see
podcastpile/store/archive.py). Per-deployment limits live in prefect.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deployments.allowlist import Allowlist, project_file
from podcastpile.config import Settings, safe_database_url
from podcastpile.prefect_api import PrefectAPI
from podcastpile.store import EpisodeStore
from podcastpile.version import code_version

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def setup(
    settings: Settings,
    api: PrefectAPI,
    *,
    say: Callable[[str], None] = print,
    gpu_pool_limit: int | None = None,
) -> None:
    """Create or update everything on the Prefect server at `api`, with its credentials.

    `gpu_pool_limit` caps how many batches run at once across all GPU workers (the manager
    sets 1 when Prefect's own database is SQLite, which fails under concurrent runs).
    """
    EpisodeStore.open(settings).close()
    say(f"episode database: {safe_database_url(settings.database_url)} (migrated)")
    with prefect_client_settings(api):
        create_work_pools(settings.work_pool, gpu_pool_limit)
        limit = "no limit" if gpu_pool_limit is None else f"{gpu_pool_limit} batch at a time"
        say(f"work pools: {settings.work_pool} ({limit}), cpu")
        deploy(api)
        say("deployments: every one in prefect.yaml")
        from deployments.automations import main as create_automations

        create_automations(quiet=True)
        say("automations: crash detection (deployments/automations.yaml)")
        save_store_block(settings)
        say("store connection: block 'podcastpile-store' (workers without DATABASE_URL use it)")


@contextmanager
def prefect_client_settings(api: PrefectAPI) -> Iterator[None]:
    """Inside: every Prefect client of this process talks to `api` with its credentials.

    Prefect reads its settings once, when it is first imported; a settings context replaces
    them for what runs inside, so the caller need not set the environment before that import.
    Without this, a process with no PREFECT_API_URL would set up a temporary server of its own
    and throw it away.
    """
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_URL,
        temporary_settings,
    )

    # The CA file too: an https:// manager is verified as `ppcli` checked it (a private CA, or
    # this machine's trust store with certifi's CAs).
    updates = {PREFECT_API_URL: api.url, PREFECT_API_AUTH_STRING: api.auth_string, PREFECT_API_KEY: api.api_key,
               PREFECT_API_SSL_CERT_FILE: api.client_environment().get("PREFECT_API_SSL_CERT_FILE")}
    with temporary_settings(updates={key: value for key, value in updates.items() if value},
                            restore_defaults={key for key, value in updates.items() if not value}):
        yield


def create_work_pools(gpu_pool: str, gpu_pool_limit: int | None) -> None:
    """The batch pool and the CPU pool, both of the `podcastpile` worker type (its workers run
    only this checkout's deployments: deployments/worker.py) with the job template in
    gpu-pool.json; overwrites both. A pool of another type (a `process` pool of an older setup)
    is deleted and made again: a pool's type cannot be changed, and a plain `prefect worker
    start` on it would run whatever a deployment says. The deployments are made again next."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from deployments.worker import WORKER_TYPE, job_template

    with get_client(sync_client=True) as client:
        for name, limit in ((gpu_pool, gpu_pool_limit), ("cpu", None)):
            try:
                if client.read_work_pool(name).type != WORKER_TYPE:
                    client.delete_work_pool(name)
            except ObjectNotFound:
                pass
            client.create_work_pool(
                WorkPoolCreate(name=name, type=WORKER_TYPE, base_job_template=job_template(),
                               concurrency_limit=limit),
                overwrite=True,
            )


def record_insecure(api: PrefectAPI, warning: str | None) -> None:
    """Keep the manager's `--insecure` warning where the dashboard reads it (a Prefect variable,
    shown on every stats run's dashboard), or remove it when the manager is safe again."""
    from prefect.variables import Variable

    from tasks.report import INSECURE_VARIABLE

    with prefect_client_settings(api):
        if warning:
            Variable.set(INSECURE_VARIABLE, warning, overwrite=True)
        else:
            Variable.unset(INSECURE_VARIABLE)


def deploy(api: PrefectAPI) -> None:
    """`prefect deploy --all` from the project root, where prefect.yaml is, to the server at `api`.

    A subprocess because `prefect deploy` is a CLI with no stable Python API; it records the
    root as the flows' working directory (prefect.yaml has no pull steps). The file is named, so
    an installed package (its prefect.yaml in deployments/) deploys too. Then every deployment
    gets this code's version (`stamp_versions`), which workers compare with their own.
    """
    env = {**os.environ, **api.client_environment(), "PREFECT_CLI_PROMPT": "false"}
    command = [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(project_file())]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{(result.stdout + result.stderr)[-3000:]}")
    stamp_versions(code_version())


def stamp_versions(version: str) -> None:
    """Give each of prefect.yaml's deployments `version` (deployments/versions.py: workers of
    another code version refuse their runs). `prefect deploy --all` ignores `--version` (it
    applies command-line options to a single deployment only) and versions each deployment by
    a hash of its flow's file instead; a worker that polls in between refuses one run at most."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    allowed = Allowlist.from_project().deployments
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(allowed))))
        for deployment in found:
            ours = allowed.get(deployment.name)
            if ours is not None and deployment.entrypoint == ours.entrypoint and deployment.version != version:
                client.update_deployment(deployment.id, DeploymentUpdate(version=version))


def save_store_block(settings: Settings) -> None:
    """Save DATABASE_URL as the SqlAlchemyConnector block flow runs fall back to.

    The password goes into the block's SecretStr field (shown as ******** in the UI). A SQLite
    path is made absolute: flow runs may start in another directory.
    """
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector
    from sqlalchemy.engine import make_url

    from tasks.settings import STORE_BLOCK

    url = make_url(settings.sqlalchemy_url)
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        database = str(Path(database).resolve())
    components = ConnectionComponents(
        driver=url.drivername, database=database, username=url.username,
        password=url.password, host=url.host, port=url.port,
        query=dict(url.query) or None,
    )
    SqlAlchemyConnector(connection_info=components).save(STORE_BLOCK, overwrite=True)
