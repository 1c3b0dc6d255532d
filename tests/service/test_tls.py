"""TLS for the manager (issue 22): `ppcli manager --tls-cert FILE --tls-key FILE` (or
TLS_CERT_FILE/TLS_KEY_FILE) serves HTTPS, and only HTTPS, on its one port; workers, `ppcli
setup` and their flow runs verify it with `--ca FILE` (or TLS_CA_FILE), and without the CA they
are refused with one line. The manager calls itself over https too, trusting its certificate
file when that holds its own root.

The certificates are made here with trustme: a private CA, a certificate for 127.0.0.1 and
localhost signed by it, and the odd ones an operator may get wrong. One manager (auth on, every
address, TLS from the settings, SQLite) serves the module's tests that need one; refusals before
start take a fraction of a second each.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from podcastpile.cli.tls import served_tls
from podcastpile.config import load_settings
from podcastpile.prefect_api import find_prefect_api
from tests.manager import PPCLI, Manager
from tests.prefect_server import busy_retried, free_port
from tests.processes import stop_tree
from tests.service.test_protected_mode import listening

PASSWORD = "tls horse battery staple"
# Settings that would name another server, password or CA than a test means.
CLEARED = ("HOST", "PORT", "WORKER_AUTH_ENABLED", "WORKER_PASSWORD", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
           "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL", "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE",
           "SSL_CERT_FILE", "SSL_CERT_DIR", "PREFECT_API_SSL_CERT_FILE", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY")


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the private CA workers are given with --ca
    other_ca: Path  # a CA that signed nothing here
    cert: Path  # the manager's certificate for 127.0.0.1 and localhost, its CA appended
    leaf: Path  # the same certificate alone, without its CA
    key: Path
    other_key: Path  # the key of another certificate
    encrypted_key: Path  # `key`, with a passphrase
    elsewhere: Path  # a certificate for manager.example only, its CA appended
    elsewhere_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    served = ca.issue_cert("127.0.0.1", "localhost")
    foreign = ca.issue_cert("manager.example")
    ca_pem = ca.cert_pem.bytes()
    files = {
        "ca": ca_pem, "other_ca": other.cert_pem.bytes(),
        "cert": served.cert_chain_pems[0].bytes() + ca_pem, "leaf": served.cert_chain_pems[0].bytes(),
        "key": served.private_key_pem.bytes(), "other_key": foreign.private_key_pem.bytes(),
        "elsewhere": foreign.cert_chain_pems[0].bytes() + ca_pem, "elsewhere_key": foreign.private_key_pem.bytes(),
        "encrypted_key": serialization.load_pem_private_key(served.private_key_pem.bytes(), None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase")),
    }
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return Certificates(**{name: folder / f"{name}.pem" for name in files})


def environment(home: Path, **extra: str) -> dict[str, str]:
    """A machine's environment: its databases under `home`, no server, password or CA named."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in CLEARED}
    env.update({
        "DATABASE_URL": f"sqlite:///{home / 'episodes.db'}",
        "ARCHIVE_MODE": "off",
        "DEVICE": "cpu",
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    })
    return env


def ppcli(cwd: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PPCLI, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The refusal: exit code 2 and one `error:` line on stderr, no traceback, no password."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    return lines[0]


def basic() -> dict[str, str]:
    api = find_prefect_api(load_settings(env_file=None, worker_password=None), manager="https://x", password=PASSWORD)
    assert api is not None
    return api.headers()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[Manager]:
    """`ppcli manager` on every address with auth on and TLS from the settings, no --ca: it
    must trust its own certificate file, which holds its root."""
    home = tmp_path_factory.mktemp("manager")
    env = environment(home, WORKER_AUTH_ENABLED="true", WORKER_PASSWORD=PASSWORD,
                      TLS_CERT_FILE=str(certificates.cert), TLS_KEY_FILE=str(certificates.key))
    running = Manager(env, home / "manager.log", free_port(), host="0.0.0.0", scheme="https", cwd=home)
    try:
        running.wait_ready()
        yield running
    finally:
        stop_tree(running.process, grace=90)
        print(running.output()[-6000:])


def verified(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca))


# --- the manager serves HTTPS ------------------------------------------------------------------


def test_the_manager_serves_https_only(manager: Manager, certificates: Certificates) -> None:
    ca = verified(certificates)
    with httpx.Client(verify=ca) as client:
        assert client.get(f"{manager.api}/health").status_code == 200
        assert client.post(f"{manager.api}/deployments/filter").status_code == 401
        assert client.post(f"{manager.api}/deployments/filter", headers=basic()).status_code == 200
        assert client.get(f"{manager.url}/docs").status_code == 401
        assert client.get(f"{manager.url}/docs", auth=("operator", PASSWORD)).status_code == 200
        ui = client.get(f"{manager.url}/")
        assert ui.status_code == 200 and "<html" in ui.text.lower()
    # the name in the certificate works as well as the address
    assert httpx.get(f"https://localhost:{manager.port}/api/health", verify=ca).status_code == 200
    # Plain HTTP gets no answer on the port, and a client without the CA does not trust it.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{manager.port}/api/health")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{manager.api}/health")

    out = manager.output()
    assert "Podcast Pile manager: https://" in out and "ready: open https://" in out
    assert f"TLS: on, certificate {certificates.cert}; clients verify it with {certificates.cert}" in out
    assert f":{manager.port} -p PASSWORD --ca CA_FILE" in out  # how GPU machines join
    assert listening(manager.port) == {"0.0.0.0"}
    # auth on every address, with TLS: the password does not travel in clear, no warning
    assert not [line for line in out.splitlines() if line.startswith("warning:")], out
    assert "travels in clear" not in out
    assert PASSWORD not in out


def test_the_manager_runs_its_own_flows_over_https(manager: Manager, certificates: Certificates) -> None:
    """Its CPU worker and the flow runs it starts (the stats run its control loops start) talk to the API
    over https, verifying with the manager's certificate file."""
    ca = verified(certificates)
    done = {"work_pools": {"name": {"any_": ["cpu"]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    deadline = time.monotonic() + 240
    while True:
        runs = httpx.post(f"{manager.api}/flow_runs/filter", json=done, headers=basic(), verify=ca).json()
        if runs or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert runs, f"no CPU flow run completed:\n{manager.output()[-4000:]}"
    assert "CERTIFICATE_VERIFY_FAILED" not in manager.output()


# --- workers and the remote CLI verify it ------------------------------------------------------


def gpu_machine(folder: Path) -> dict[str, str]:
    """Another machine's environment: no episode database, password or CA of its own."""
    folder.mkdir(exist_ok=True)
    env = environment(folder)
    del env["DATABASE_URL"]
    return env


def test_a_worker_joins_over_https_with_the_ca(manager: Manager, certificates: Certificates, tmp_path: Path) -> None:
    """`ppcli worker --ca` passes the check, and its Prefect worker and the flow run it takes
    (an empty batch) reach the API over https: the run completes."""
    ca = verified(certificates)
    deployments = httpx.post(f"{manager.api}/deployments/filter", headers=basic(), verify=ca).json()
    batch = next(d for d in deployments if d["name"] == "gpu")
    run = busy_retried(lambda: httpx.post(f"{manager.api}/deployments/{batch['id']}/create_flow_run", json={},
                                          headers=basic(), verify=ca)).json()
    joined = ppcli(tmp_path, gpu_machine(tmp_path / "gpu"), "worker", "-m", manager.url, "-p", PASSWORD,
                   "--ca", str(certificates.ca), "--once", "-i", "tls-gpu", timeout=300)
    assert joined.returncode == 0, joined.stderr[-4000:]
    assert f"flow run {run['id']} ended COMPLETED" in joined.stderr
    state = httpx.get(f"{manager.api}/flow_runs/{run['id']}", headers=basic(), verify=ca).json()["state"]
    assert state["type"] == "COMPLETED"
    assert "CERTIFICATE_VERIFY_FAILED" not in joined.stdout + joined.stderr
    workers = httpx.post(f"{manager.api}/work_pools/gpu/workers/filter", json={}, headers=basic(), verify=ca).json()
    assert "tls-gpu" in [worker["name"] for worker in workers]


# The manager sends its root along (it is in its certificate file): OpenSSL says so.
@pytest.mark.parametrize(
    ("ca", "url", "expected"),
    [
        (None, "https://127.0.0.1", ("cannot verify the certificate of the manager at https://127.0.0.1:{port}: "
         "self-signed certificate in certificate chain; give the CA that signed it with --ca FILE or TLS_CA_FILE")),
        ("other_ca", "https://127.0.0.1", ("cannot verify the certificate of the manager at https://127.0.0.1:{port}: "
         "self-signed certificate in certificate chain; {path} does not hold the CA that signed it")),
        # an address the certificate does not name (the manager listens on every address)
        ("ca", "https://127.0.0.2", ("cannot verify the certificate of the manager at https://127.0.0.2:{port}: "
         "IP address mismatch, certificate is not valid for '127.0.0.2'; use a name or address the certificate "
         "is for in the manager's URL")),
        ("missing", "https://127.0.0.1", ("cannot read the CA file {path} (--ca, TLS_CA_FILE or "
         "PREFECT_API_SSL_CERT_FILE): No such file or directory")),
        ("ca", "http://127.0.0.1", "cannot reach the manager at http://127.0.0.1:{port}: "),
    ],
)
def test_a_worker_that_cannot_verify_the_manager_is_refused_in_one_line(
    manager: Manager, certificates: Certificates, tmp_path: Path, ca: str | None, url: str, expected: str
) -> None:
    path = None if ca is None else (tmp_path / "nope.pem" if ca == "missing" else getattr(certificates, ca))
    refused = ppcli(tmp_path, gpu_machine(tmp_path / "gpu"), "worker", "-m", f"{url}:{manager.port}",
                    "-p", PASSWORD, *(["--ca", str(path)] if path else []))
    line = one_error_line(refused)
    assert line.startswith("error: " + expected.format(port=manager.port, path=path)), line
    if url.startswith("http:"):
        assert line.endswith("(a manager serving HTTPS drops plain HTTP: use https://)"), line


def test_setup_verifies_the_manager_with_the_ca_setting(
    manager: Manager, certificates: Certificates, tmp_path: Path
) -> None:
    """The remote CLI: `ppcli setup -m https://...` with TLS_CA_FILE (here in .env) sets the
    manager up; without it, one line."""
    env = environment(tmp_path, DATABASE_URL=manager.env["DATABASE_URL"])
    refused = ppcli(tmp_path, env, "setup", "-m", manager.url, "-p", PASSWORD)
    assert "cannot verify the certificate of the manager" in one_error_line(refused)
    (tmp_path / ".env").write_text(f"TLS_CA_FILE={certificates.ca}\n")
    again = ppcli(tmp_path, env, "setup", "-m", manager.url, "-p", PASSWORD, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "setup: deployments: every one in prefect.yaml" in again.stdout


def test_stats_asks_an_https_manager_with_the_ca_setting(
    manager: Manager, certificates: Certificates, tmp_path: Path
) -> None:
    """`ppcli stats` asks the manager's Prefect API (runs the workers refused) as workers do."""
    env = environment(tmp_path, DATABASE_URL=manager.env["DATABASE_URL"], PREFECT_API_URL=manager.api,
                      WORKER_PASSWORD=PASSWORD)
    unverified = ppcli(tmp_path, env, "stats", "--json")
    assert unverified.returncode == 0, unverified.stderr[-2000:]
    answer = json.loads(unverified.stdout)
    assert answer["refused_runs"] is None and "certificate" in answer["refused_runs_unknown_reason"]
    (tmp_path / ".env").write_text(f"TLS_CA_FILE={certificates.ca}\n")
    verified_answer = json.loads(ppcli(tmp_path, env, "stats", "--json").stdout)
    assert verified_answer["refused_runs"] == 0, verified_answer


# --- the rule for the CA, as a function --------------------------------------------------------


def test_the_ca_option_then_the_setting_then_prefects_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_API_SSL_CERT_FILE": "/etc/prefect-ca.pem"}
    settings = load_settings(env_file=None, worker_password=None, tls_ca_file="setting.pem")
    api = find_prefect_api(settings, manager="https://m:8000", ca="option.pem", environ=environ)
    assert api is not None and api.ca_file == str(tmp_path / "option.pem")  # made absolute
    assert api.client_environment()["PREFECT_API_SSL_CERT_FILE"] == str(tmp_path / "option.pem")
    api = find_prefect_api(settings, manager="https://m:8000", environ=environ)
    assert api is not None and api.ca_file == str(tmp_path / "setting.pem")
    unset = load_settings(env_file=None, worker_password=None, tls_ca_file="")
    api = find_prefect_api(unset, manager="https://m:8000", environ=environ)
    assert api is not None and api.ca_file == "/etc/prefect-ca.pem"
    api = find_prefect_api(unset, manager="https://m:8000", environ={"PREFECT_HOME": str(tmp_path / "home")})
    # none named: SSL_CERT_FILE, else this machine's trust store with certifi's CAs
    # (tests/test_prefect_api.py), for the workers' Prefect clients as for `ppcli`'s checks
    assert api is not None and api.ca_file is None
    assert api.client_environment()["PREFECT_API_SSL_CERT_FILE"] == api.verify_file()


def test_which_ca_the_manager_trusts_itself(certificates: Certificates) -> None:
    """Its certificate file when that holds a self-signed certificate (its root); else --ca or
    TLS_CA_FILE; else the public CAs (None)."""
    settings = load_settings(env_file=None, worker_password=None)
    with_root = served_tls(str(certificates.cert), str(certificates.key), None, settings)
    assert with_root is not None and with_root.ca == str(certificates.cert)
    alone = served_tls(str(certificates.leaf), str(certificates.key), None, settings)
    assert alone is not None and alone.ca is None
    named = served_tls(str(certificates.leaf), str(certificates.key), str(certificates.ca), settings)
    assert named is not None and named.ca == str(certificates.ca)
    from_setting = load_settings(env_file=None, worker_password=None, tls_ca_file=str(certificates.ca))
    assert served_tls(str(certificates.leaf), str(certificates.key), None, from_setting).ca == str(certificates.ca)
    assert served_tls(None, None, str(certificates.ca), settings) is None


# --- refusals before anything starts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "settings", "expected"),
    [
        ({"--tls-cert": "cert"}, {}, "HTTPS needs both the certificate and its key"),
        ({}, {"TLS_CERT_FILE": "cert"}, "invalid settings: set both TLS_CERT_FILE and TLS_KEY_FILE, or neither"),
        ({"--tls-cert": "missing", "--tls-key": "key"}, {},
         "cannot read the TLS certificate {missing}: No such file or directory"),
        ({}, {"TLS_CERT_FILE": "cert", "TLS_KEY_FILE": "missing"}, "cannot read the TLS key {missing}: No such file"),
        ({"--tls-cert": "cert", "--tls-key": "other_key"}, {},
         "the TLS key {other_key} does not belong to the certificate {cert}"),
        ({"--tls-cert": "cert", "--tls-key": "encrypted_key"}, {},
         "the TLS key {encrypted_key} is encrypted; the manager needs it without a passphrase"),
        ({"--tls-cert": "key", "--tls-key": "key"}, {}, "no PEM certificate in {key}"),
        ({"--tls-cert": "cert", "--tls-key": "cert"}, {}, "cannot load the TLS key {cert} for {cert}"),
    ],
)
def test_bad_certificate_files_are_refused_before_anything_starts(
    certificates: Certificates, tmp_path: Path, files: dict[str, str], settings: dict[str, str], expected: str
) -> None:
    paths = {name: str(getattr(certificates, name)) for name in Certificates.__dataclass_fields__}
    paths["missing"] = str(tmp_path / "missing.pem")
    port = free_port()
    options = [item for option, name in files.items() for item in (option, paths[name])]
    env = environment(tmp_path, **{setting: paths[name] for setting, name in settings.items()})
    started = time.monotonic()
    refused = ppcli(tmp_path, env, "manager", "--port", str(port), *options)
    line = one_error_line(refused)
    assert line.startswith("error: " + expected.format(**paths)), line
    assert refused.stdout == ""  # no banner: nothing was started
    assert time.monotonic() - started < 30
    assert listening(port) == set()
    assert not (tmp_path / "prefect-home").exists()


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        # a private CA's certificate without its root: the manager has nothing to verify it with
        ("leaf", "key", ("cannot verify the certificate of the manager at https://127.0.0.1:{port}: unable to get "
                         "local issuer certificate; give the CA that signed the certificate with --ca FILE")),
        # a certificate for another name: the manager calls itself at 127.0.0.1
        ("elsewhere", "elsewhere_key", ("cannot verify the certificate of the manager at https://127.0.0.1:{port}: "
                                        "IP address mismatch, certificate is not valid for '127.0.0.1'; the manager "
                                        "calls itself at this address")),
    ],
)
def test_a_certificate_the_manager_cannot_verify_itself_stops_it_in_one_line(
    certificates: Certificates, tmp_path: Path, cert: str, key: str, expected: str
) -> None:
    port = free_port()
    started = ppcli(tmp_path, environment(tmp_path), "manager", "--port", str(port),
                    "--tls-cert", str(getattr(certificates, cert)), "--tls-key", str(getattr(certificates, key)),
                    timeout=240)
    assert started.returncode == 2, started.stdout[-2000:] + started.stderr[-3000:]
    errors = [line for line in started.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: " + expected.format(port=port)), started.stderr
    assert "Traceback" not in started.stderr
    assert listening(port) == set()  # the server it started is stopped


# --- the warning that the password travels in clear --------------------------------------------


def test_without_tls_auth_on_every_address_warns_that_the_password_travels_in_clear(tmp_path: Path) -> None:
    """The counterpart of the TLS manager above, which does not warn: read from the banner,
    printed before the server starts, then stopped at once."""
    port = free_port()
    log = tmp_path / "manager.log"
    env = environment(tmp_path, WORKER_AUTH_ENABLED="true", WORKER_PASSWORD=PASSWORD)
    process = subprocess.Popen([*PPCLI, "manager", "--port", str(port), "--host", "0.0.0.0"], cwd=tmp_path, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "GPU machines join with" not in log.read_text() or "warning:" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(0.2)
        out = log.read_text()
    finally:  # a second signal kills what it started at once (it is still starting)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        stop_tree(process, grace=30)
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [(f"warning: no TLS: the password travels in clear to 0.0.0.0:{port}; serve HTTPS with "
                         "--tls-cert/--tls-key or put a TLS reverse proxy (Caddy, nginx) in front, see "
                         "docs/operate.md")], out
    assert "TLS: off" in out and "-m http://" in out
