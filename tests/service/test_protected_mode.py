"""Protected mode (issue 22): an open manager is remote code execution on every worker (a
deployment's pull step is a shell command), so without auth `ppcli manager` serves this machine
only, refuses a non-loopback address unless `--insecure` (which warns), and
`--generate-password` turns auth on in `.env`. With auth on a non-loopback address, it says the
password travels in clear.

Refusals happen before anything starts: those tests take a fraction of a second. The bind
address of an allowed start is read from the kernel's table of listening sockets; one test
starts a whole manager (auth on, with the generated password) and calls it as a worker, the UI's
login form and a real `ppcli worker` do.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from podcastpile.cli.manager import _bind_address, is_loopback
from podcastpile.cli.manager_api import ManagerProblem, check_manager
from podcastpile.cli.stopping import descendants, signal_all
from podcastpile.config import load_settings
from podcastpile.prefect_api import find_prefect_api
from tests.manager import PPCLI, ROOT
from tests.prefect_server import free_port
from tests.processes import alive, stop_tree

CLEARED = ("HOST", "PORT", "WORKER_AUTH_ENABLED", "WORKER_PASSWORD", "PREFECT_API_URL",
           "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A manager's environment: its databases under `tmp_path`, no address or auth settings."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in CLEARED}
    env.update({
        "DATABASE_URL": f"sqlite:///{tmp_path / 'episodes.db'}",
        "ARCHIVE_MODE": "off",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    })
    return env


def ppcli(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PPCLI, *args], check=False, cwd=tmp_path, env=environment(tmp_path, **extra),
                          capture_output=True, text=True, timeout=60)


def listening(port: int) -> set[str]:
    """The addresses a TCP socket listens on at `port`, from the kernel's tables."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if sys.byteorder == "little":  # each 32-bit word is printed in host byte order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


class Started:
    """`ppcli manager` as a subprocess in `tmp_path`, its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, *args: str, **extra: str) -> None:
        self.out, self.err = tmp_path / "manager.out", tmp_path / "manager.err"
        self.process = subprocess.Popen(
            [*PPCLI, "manager", *args], cwd=tmp_path, env=environment(tmp_path, **extra),
            stdout=self.out.open("w"), stderr=self.err.open("w"), start_new_session=True,
        )

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_until(self, ready, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"manager exited:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {what}:\n{self.output()[-4000:]}"
            time.sleep(0.2)

    def stop_now(self) -> None:
        """Stop it mid-start the operator's fast way: a second signal kills everything at once."""
        tree = {self.process.pid, *descendants(self.process.pid)}
        self.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        tree |= set(descendants(self.process.pid))
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        finally:
            signal_all([pid for pid in tree if alive(pid)], signal.SIGKILL)
            stop_tree(self.process, grace=0)


# --- refusals: before anything starts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra", "asked"),
    [
        (["--host", "0.0.0.0"], {}, "--host 0.0.0.0"),
        ([], {"HOST": "0.0.0.0"}, "HOST=0.0.0.0"),
        (["--host", "::"], {}, "--host ::"),
        (["--host", "192.0.2.10"], {"HOST": "127.0.0.1"}, "--host 192.0.2.10"),  # --host wins
        (["--host", "manager.invalid"], {}, "--host manager.invalid"),  # a name that does not resolve
    ],
)
def test_a_non_loopback_address_without_auth_is_refused(tmp_path: Path, args: list[str], extra: dict, asked: str) -> None:
    port = free_port()
    started = time.monotonic()
    refused = ppcli(tmp_path, "manager", "--port", str(port), *args, **extra)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line, refused.stderr
    assert line.startswith(f"error: refusing {asked} without auth")
    for words in ("WORKER_AUTH_ENABLED", "WORKER_PASSWORD", "`ppcli manager --generate-password`", "--insecure",
                  "control the pipeline and read the database password"):
        assert words in line
    assert refused.stdout == ""  # no banner: nothing was started
    assert time.monotonic() - started < 30
    assert listening(port) == set()
    assert not (tmp_path / "prefect-home").exists()


def test_the_refusal_also_stands_in_dot_env(tmp_path: Path) -> None:
    """HOST=0.0.0.0 in .env (an original Podcast Pile .env has it) is asked for explicitly too."""
    (tmp_path / ".env").write_text("HOST=0.0.0.0\nWORKER_AUTH_ENABLED=false\n")
    refused = ppcli(tmp_path, "manager")
    assert refused.returncode == 2 and "refusing HOST=0.0.0.0 without auth" in refused.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "10.0.0.1", "fd00::1", "manager.invalid"])
def test_non_loopback_addresses(host: str) -> None:
    assert not is_loopback(host)


def test_the_address_served() -> None:
    # HOST unset: every address with auth, this machine only without.
    assert _bind_address(None, None, None, False, 8000) == "127.0.0.1"
    assert _bind_address(None, None, "secret", False, 8000) == "0.0.0.0"
    # asked for: --host over HOST; loopback always, others with auth or --insecure
    assert _bind_address("localhost", "0.0.0.0", None, False, 8000) == "localhost"
    assert _bind_address(None, "::", "secret", False, 8000) == "::"
    assert _bind_address("0.0.0.0", None, None, True, 8000) == "0.0.0.0"


def test_empty_host_setting_means_unset() -> None:
    assert load_settings(env_file=None, host="").host is None
    assert load_settings(env_file=None).host is None


# --- allowed starts: the address the server really listens on ----------------------------------


def test_without_auth_the_manager_serves_this_machine_only(tmp_path: Path) -> None:
    port = free_port()
    manager = Started(tmp_path, "--port", str(port))
    try:
        manager.wait_until(lambda: listening(port), f"listener on {port}")
        assert listening(port) == {"127.0.0.1"}
        out = manager.out.read_text()
        assert f"listening on: 127.0.0.1:{port} (this machine only)" in out
        assert "auth: off" in out
        assert "run `ppcli manager --generate-password`, then restart the manager" in out
        assert "GPU machines join with" not in out
        assert not [line for line in manager.err.read_text().splitlines() if line.startswith("warning:")]
    finally:
        manager.stop_now()


def test_insecure_serves_every_address_without_auth_and_warns(tmp_path: Path) -> None:
    port = free_port()
    manager = Started(tmp_path, "--port", str(port), "--host", "0.0.0.0", "--insecure")
    try:
        manager.wait_until(lambda: listening(port), f"listener on {port}")
        assert listening(port) == {"0.0.0.0"}
        warnings = [line for line in manager.err.read_text().splitlines() if line.startswith("warning:")]
        assert warnings == [(f"warning: --insecure: auth is off on 0.0.0.0:{port}: anyone who can reach this "
                             "port controls the pipeline (starts, cancels and deletes runs) and reads the database password")]
        assert f"listening on: 0.0.0.0:{port} (every address)" in manager.out.read_text()
        # ... and where operators look: the dashboard reads it from a Prefect variable setup leaves
        variable = f"http://127.0.0.1:{port}/api/variables/name/podcastpile-manager-insecure"
        manager.wait_until(lambda: _answers(variable), "the --insecure variable")
        warning = httpx.get(variable, timeout=10).json()["value"]
        assert "without auth (--insecure)" in warning
        # ... and the dashboard the stats flow renders from it, as the CPU worker's runs publish it
        env = environment(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
        stats = subprocess.run([sys.executable, "-c", "from flows.stats import stats_flow; print(stats_flow())"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert stats.returncode == 0, stats.stderr[-3000:]
        assert f"> **Warning**: `{warning}`" in stats.stdout
        artifact = httpx.get(f"http://127.0.0.1:{port}/api/artifacts/podcastpile-dashboard/latest", timeout=10).json()
        assert f"> **Warning**: `{warning}`" in artifact["data"]
    finally:
        manager.stop_now()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# --- --generate-password, and a manager that uses it -------------------------------------------


def test_generate_password_writes_dot_env(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# my settings\nPORT=8870\nWORKER_AUTH_ENABLED=false\nWORKER_PASSWORD=old\n"
                        "DEVICE=cpu\nworker_password=older\n# WORKER_PASSWORD=commented\nDATASET_DIR=./out")
    env_file.chmod(0o644)
    generated = ppcli(tmp_path, "manager", "--generate-password")
    assert generated.returncode == 0, generated.stderr
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    password = env_file.read_text().split("WORKER_PASSWORD=", 1)[1].split("\n", 1)[0]
    assert len(password) >= 40  # token_urlsafe(32): 43 characters
    assert env_file.read_text() == (
        "# my settings\nPORT=8870\nWORKER_AUTH_ENABLED=true\nWORKER_PASSWORD=" + password + "\n"
        "DEVICE=cpu\n# WORKER_PASSWORD=commented\nDATASET_DIR=./out")
    # printed once, with how workers join; nothing started
    assert generated.stdout.count(password) == 1
    assert "ppcli worker -m http://" in generated.stdout and ":8870" in generated.stdout
    assert "replaces the previous password" in generated.stdout
    assert list(tmp_path.iterdir()) == [env_file]  # no temporary file left, no server state

    # Again: a new password, the same lines.
    again = ppcli(tmp_path, "manager", "--generate-password")
    assert again.returncode == 0
    text = env_file.read_text()
    assert password not in text and text.count("WORKER_PASSWORD=") == 2  # the new one, the comment


def test_generate_password_creates_dot_env_and_warns_of_the_environment(tmp_path: Path) -> None:
    generated = ppcli(tmp_path, "manager", "--generate-password", WORKER_PASSWORD="from-env")
    assert generated.returncode == 0, generated.stderr
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    assert lines[0] == "WORKER_AUTH_ENABLED=true" and lines[1].startswith("WORKER_PASSWORD=") and len(lines) == 2
    assert "the environment sets WORKER_PASSWORD, which wins over .env" in generated.stderr
    assert "from-env" not in generated.stdout + generated.stderr


def test_generated_password_guards_a_manager_on_every_address(tmp_path: Path) -> None:
    """The one real start: --generate-password, then `ppcli manager` (HOST unset, so every
    address now that auth is on); a worker's check passes with the password, the API is 401
    without it, and the banner says the password travels in clear."""
    generated = ppcli(tmp_path, "manager", "--generate-password")
    assert generated.returncode == 0, generated.stderr
    password = next(line.split("=", 1)[1] for line in (tmp_path / ".env").read_text().splitlines()
                    if line.startswith("WORKER_PASSWORD="))
    port = free_port()
    manager = Started(tmp_path, "--port", str(port))
    try:
        manager.wait_until(lambda: "ready: open" in manager.out.read_text(), "ready")
        assert listening(port) == {"0.0.0.0"}
        out, err = manager.out.read_text(), manager.err.read_text()
        assert f"listening on: 0.0.0.0:{port} (every address)" in out
        assert "auth: on" in out and f"-m http://{socket.gethostname()}:{port} -p PASSWORD" in out
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        assert warnings == [(f"warning: no TLS: the password travels in clear to 0.0.0.0:{port}; serve HTTPS "
                             "with --tls-cert/--tls-key or put a TLS reverse proxy (Caddy, nginx) in front, see "
                             "docs/operate.md")]
        assert password not in out + err

        url = f"http://127.0.0.1:{port}"
        config = load_settings(env_file=None)
        check_manager(find_prefect_api(config, manager=url, password=password))  # what `ppcli worker` checks
        with pytest.raises(ManagerProblem, match="requires the worker password"):
            check_manager(find_prefect_api(config, manager=url, password=None))
        with pytest.raises(ManagerProblem, match="wrong worker password"):
            check_manager(find_prefect_api(config, manager=url, password="guess"))
        assert httpx.post(f"{url}/api/deployments/filter").status_code == 401
        api = find_prefect_api(config, manager=url, password=password)
        assert httpx.post(f"{url}/api/deployments/filter", headers=api.headers()).status_code == 200

        _the_ui_logs_in_with(url, password)
        _a_gpu_worker_joins_with(tmp_path, url, password)

        manager.process.send_signal(signal.SIGINT)
        assert manager.process.wait(timeout=120) == 0, manager.output()[-3000:]
    finally:
        if manager.process.poll() is None:
            manager.stop_now()


def _the_ui_logs_in_with(url: str, password: str) -> None:
    """The UI's login path as Prefect 3.9's UIs take it (their bundled JavaScript): the settings
    and the page load without the password and say auth is BASIC; the login form then sends
    `Authorization: Basic btoa(typed password)` to `{api_url}/admin/version`, and keeps sending
    that header (with a CSRF token for writes) once it answered 200."""
    settings = httpx.get(f"{url}/ui-settings", timeout=10)
    assert settings.status_code == 200 and settings.json()["auth"] == "BASIC"
    api_url = settings.json()["api_url"]
    api = api_url if api_url.startswith("http") else url + api_url  # the manager serves "/api"
    assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the login page itself is public
    typed = {"Authorization": "Basic " + base64.b64encode(password.encode()).decode()}  # btoa(password)
    assert httpx.get(f"{api}/admin/version", headers=typed, timeout=10).status_code == 200
    wrong = {"Authorization": "Basic " + base64.b64encode(password[:-1].encode()).decode()}
    assert httpx.get(f"{api}/admin/version", headers=wrong, timeout=10).status_code == 401
    token = httpx.get(f"{api}/csrf-token", params={"client": "ui-test"}, headers=typed, timeout=10)
    assert token.status_code in (200, 422), token.text  # 422: CSRF protection off, as by default
    assert httpx.post(f"{api}/flow_runs/filter", json={}, headers=typed, timeout=10).status_code == 200


def _a_gpu_worker_joins_with(tmp_path: Path, url: str, password: str) -> None:
    """`ppcli worker` on another machine (its own directory, no .env), the generated password in
    its environment: it passes the start check and its Prefect worker shows online in `gpu`."""
    machine = tmp_path / "gpu-machine"
    machine.mkdir()
    env = environment(machine, WORKER_PASSWORD=password)
    log = machine / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen([*PPCLI, "worker", "-m", url, "-i", "joined-box"], cwd=machine, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"{url}/api"
    headers = {"Authorization": "Basic " + base64.b64encode(password.encode()).decode()}

    def online() -> bool:
        assert worker.poll() is None, f"ppcli worker exited {worker.returncode}:\n{log.read_text()[-3000:]}"
        found = httpx.post(f"{api}/work_pools/gpu/workers/filter", json={}, headers=headers, timeout=10).json()
        return any(w["name"] == "joined-box" and w["status"] == "ONLINE" for w in found)

    try:
        deadline = time.monotonic() + 120
        while not online():
            assert time.monotonic() < deadline, f"no worker online:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        stop_tree(worker, grace=30)
    assert password not in log.read_text()
