"""`ppcli manager` as a test's subprocess: started as an operator starts it, ready when it says so."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PPCLI = [sys.executable, "-m", "podcastpile.cli"]


class Manager:
    """A running `ppcli manager` subprocess and what clients need to reach it."""

    def __init__(self, env: dict[str, str], log: Path, port: int, *options: str, host: str = "127.0.0.1",
                 scheme: str = "http", cwd: Path = ROOT) -> None:
        """`scheme`: https for a manager given a certificate (options or settings); clients
        reach it at 127.0.0.1 whatever `host` it binds."""
        # Started from the checkout (it deploys prefect.yaml from there), its export would write
        # the default DATASET_DIR, ./dataset, into the checkout: a later `make demo` there then
        # refuses a dataset its store did not write. Beside the log unless the test names one.
        env = {"DATASET_DIR": str(log.parent / "dataset"), **env}
        self.env, self.log, self.port = env, log, port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.api = self.url + "/api"
        self.process = subprocess.Popen(
            [*PPCLI, "manager", "--port", str(port), "--host", host, *options],
            cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 300, times: int = 1) -> None:
        """Until the manager has said `ready` `times` times (a reload says it again)."""
        deadline = time.monotonic() + timeout
        while self.output().count("ready: open") < times:
            assert self.process.poll() is None, f"manager exited:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"manager not ready:\n{self.output()[-4000:]}"
            time.sleep(1)
