"""`ppcli manager` and `ppcli setup`: the Prefect server, set up for the pipeline, as one command.

The manager is the one service every worker talks to: it starts Prefect's server (API, /docs
and the UI on one port; deployments/server.py) with the project's settings, waits until it is
healthy, runs setup (store migrated, work pools, deployments, automations, the store block)
and runs a CPU worker for what belongs next to the server (archive, dispatch, export, stats).
A one-machine install is `ppcli manager` plus one `ppcli worker`; more GPU machines only run
`ppcli worker -m http://manager:PORT`.

With WORKER_AUTH_ENABLED the server's auth string is WORKER_PASSWORD: the API and the UI ask
for it (only /api/health and /api/ready stay open; deployments/server.py closes the docs), and
workers pass it with `-p` or their own WORKER_PASSWORD. `ppcli setup` finds its server and
password by the rule every command follows (`podcastpile.prefect_api`), without the guess of a
manager on this machine: setting up the wrong server would be worse than naming one.

Protected mode (as Redis and Jupyter have it): whoever reaches an open manager can create a
deployment whose pull step is a shell command and have every worker run it. So without auth
the manager serves on loopback only: HOST unset means 127.0.0.1 then (0.0.0.0 with auth on),
and a non-loopback address asked for explicitly (`--host`, HOST) is refused with one line,
unless `--insecure`, which warns on every start. `--generate-password` writes the password to
`.env`. With auth on, a non-loopback address still gets one line without TLS: the password
travels in clear.

TLS: `--tls-cert FILE --tls-key FILE` (TLS_CERT_FILE, TLS_KEY_FILE) serve HTTPS, and only
HTTPS, for everything on the port; a TLS reverse proxy in front is the other way
(docs/operate.md). The manager then calls itself over https too, verifying its own certificate
(podcastpile/cli/tls.py says with which CA).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from deployments.wheel_index import published_filename
from podcastpile.cli.application import app
from podcastpile.cli.common import EXIT_FAILED, EXIT_SETUP, fail, settings
from podcastpile.cli.control import ControlLoops
from podcastpile.cli.display import errors, literal, say, tell
from podcastpile.cli.manager_api import ManagerProblem, check_manager, online_workers
from podcastpile.cli.stack import Restarts, Stack, run_setup
from podcastpile.cli.tls import ServedTLS, served_tls
from podcastpile.config import Settings, SettingsError, load_settings, safe_database_url
from podcastpile.prefect_api import find_prefect_api, server_password

ROOT = Path(__file__).resolve().parent.parent.parent
# What --reload watches: the pipeline's code and configuration.
WATCHED = ("podcastpile", "tasks", "flows", "deployments")
WATCHED_FILES = ("prefect.yaml", ".env")
EXIT_STOPPED = 0
# HOST unset: every address when a password guards the manager, this machine only when not.
EVERY_ADDRESS = "0.0.0.0"
LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::")
# The settings --generate-password writes to .env, replacing the lines that set them.
AUTH_SETTINGS = re.compile(r"^\s*(?:export\s+)?(WORKER_AUTH_ENABLED|WORKER_PASSWORD)\s*=", re.IGNORECASE)


@app.command("setup")
def setup_command(
    manager: Annotated[str | None, typer.Option("--manager", "-m", help="Manager URL, e.g. http://manager:8000 (default: PREFECT_API_URL).")] = None,
    password: Annotated[str | None, typer.Option("--password", "-p", help="The manager's password (default: WORKER_PASSWORD, else PREFECT_API_AUTH_STRING).")] = None,
    one_batch_at_a_time: Annotated[bool, typer.Option(help="Cap the gpu pool at one running batch (for a SQLite Prefect database).")] = False,
    ca: Annotated[str | None, typer.Option("--ca", metavar="FILE", help="CA certificates (PEM) to verify an https:// manager with (default: TLS_CA_FILE, else this machine's CAs and certifi's).")] = None,
) -> None:
    """Create or update everything the pipeline needs on a Prefect server; safe to rerun."""
    config = settings()
    api = find_prefect_api(config, manager=manager, password=password, ca=ca)
    if api is None:
        fail("no Prefect server named: use -m http://host:port or set PREFECT_API_URL", code=EXIT_SETUP)
    try:
        check_manager(api)
    except ManagerProblem as problem:
        fail(str(problem), code=EXIT_SETUP)
    run_setup(config, api, 1 if one_batch_at_a_time else None)


@app.command()
def manager(
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port (default: PORT, 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: HOST; unset: 0.0.0.0 with auth on, 127.0.0.1 without). A non-loopback address needs auth or --insecure.")] = None,
    reload: Annotated[bool, typer.Option(help="Restart everything when the code or .env changes (development).")] = False,
    allow_sqlite_workers: Annotated[bool, typer.Option(help="Let several batches run at once although Prefect's database is SQLite.")] = False,
    cpu_runs: Annotated[int, typer.Option(min=1, help="Flow runs the manager's CPU worker runs at once (archive, dispatch, export, stats).")] = 6,
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve a non-loopback address without auth anyway: anyone who reaches the port controls the pipeline and reads the database password.")] = False,
    generate_password: Annotated[bool, typer.Option("--generate-password", help="Write WORKER_AUTH_ENABLED=true and a new WORKER_PASSWORD to ./.env (mode 0600), print the password once and exit.")] = False,
    tls_cert: Annotated[str | None, typer.Option("--tls-cert", metavar="FILE", help="Serve HTTPS with this certificate (PEM, intermediates after it; default: TLS_CERT_FILE). Needs --tls-key.")] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", metavar="FILE", help="The certificate's private key (PEM, unencrypted; default: TLS_KEY_FILE).")] = None,
    ca: Annotated[str | None, typer.Option("--ca", metavar="FILE", help="CA certificates (PEM) the manager's own clients verify its certificate with (default: TLS_CA_FILE, else the certificate itself when self-signed, else this machine's CAs and certifi's).")] = None,
) -> None:
    """Run the Prefect server with the pipeline set up, plus its CPU worker; Ctrl+C stops all."""
    if generate_password:
        # Before the settings are read: an .env with auth on and no password is what it fixes.
        _generate_password(Path(".env"), port)
        raise typer.Exit(0)
    config = settings()
    port = port or config.port
    auth = server_password(config)  # what the server demands; None: it is open
    host = _bind_address(host, config.host, auth, insecure, port)
    tls = served_tls(tls_cert, tls_key, ca, config)
    scheme = "https" if tls else "http"
    local = LOOPBACK if host in (*WILDCARDS, "") else host
    # Its own calls to the server follow the rule every client follows, given this address,
    # the password the server demands and the CA its certificate verifies with.
    api = find_prefect_api(config, manager=f"{scheme}://{_url_host(local)}:{port}", password=auth,
                           ca=tls.ca if tls else None)
    assert api is not None  # named explicitly
    sqlite = _prefect_database_is_sqlite()
    # At most one batch at a time on SQLite: concurrent runs make it fail (database is locked).
    gpu_pool_limit = 1 if sqlite and not allow_sqlite_workers else None
    insecure = None
    if not auth and not is_loopback(host):
        insecure = (f"the manager serves {_url_host(host)}:{port} without auth (--insecure): anyone "
                    "who can reach it can run flow runs, and read and change the pipeline's state")
    stack = Stack(host, port, auth, api, config, gpu_pool_limit, cpu_runs, tls, insecure)
    loopback = is_loopback(host)
    shown = socket.gethostname() if host in (*WILDCARDS, "") else local
    public = f"{scheme}://{_url_host(shown)}:{port}"
    _announce(config, public, host, port, loopback, auth, sqlite, gpu_pool_limit, tls)

    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            errors.print(literal("stopping the manager (signal again to stop at once)"))
        else:
            stack.kill()
            os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loops = ControlLoops(api, config, say=say, started=stack.wake_worker)
    restarts = Restarts()
    try:
        stack.start()
        _pause_schedules(loops)  # before `ready`: from now on runs start when there is work
        say(f"ready: open {public} (API docs: {public}/docs)")
        stamp = _code_stamp() if reload else None
        warned_workers = False
        next_worker_count = 0.0  # asked once a minute: each ask is a request the server answers
        loops.start()  # archive, dispatch, export, stats: a run only when there is work
        while not signals["count"]:
            time.sleep(1)
            dead = stack.dead()
            if dead:
                wait = restarts.next_wait()
                if wait is None:
                    fail(f"{dead} exited, the {Restarts.LIMIT + 1}th time within {Restarts.WINDOW / 60:g} "
                         "minutes; stopping the manager", code=EXIT_FAILED)
                say(f"{dead} exited; starting it again in {wait:g} s")
                time.sleep(wait)
                stack.restart()
                _pause_schedules(loops)
                say(f"ready: open {public} (restarted)")
            if reload and _code_stamp() != stamp:
                say("code changed: restarting the server and the CPU worker")
                stack.stop()
                stack.start()
                _pause_schedules(loops)
                stamp = _code_stamp()
                say(f"ready: open {public} (restarted)")
            if gpu_pool_limit and not warned_workers and time.monotonic() >= next_worker_count:
                next_worker_count = time.monotonic() + 60
                if online_workers(api, config.work_pool) <= 1:
                    continue
                warned_workers = True
                errors.print(literal(
                    "several GPU workers are online but Prefect's database is SQLite: batches run one "
                    "at a time. Set PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://... "
                    "and restart the manager to run them side by side."))
    finally:
        loops.stop()
        stack.stop()
    raise typer.Exit(EXIT_STOPPED)


def _pause_schedules(loops: ControlLoops) -> None:
    """Pause the control deployments' schedules; a failure is said and retried by the loops."""
    try:
        loops.pause_schedules()
    except Exception as error:  # noqa: BLE001 - the next check tries again
        say(f"control loops: could not pause the schedules yet ({type(error).__name__}: {error})")


def _announce(config: Settings, public: str, host: str, port: int, loopback: bool, auth: str | None,
              sqlite: bool, gpu_pool_limit: int | None, tls: ServedTLS | None = None) -> None:
    """What the manager serves, to whom, and how GPU machines join it, printed once at start."""
    say(f"Podcast Pile manager: {public}")
    reach = "this machine only" if loopback else ("every address" if host in WILDCARDS else "this address")
    say(f"  listening on: {_url_host(host)}:{port} ({reach})")
    say(f"  episode database: {safe_database_url(config.database_url)}")
    say(f"  auth: {'on (the UI and workers need WORKER_PASSWORD)' if auth else 'off'}")
    # What a worker adds to trust this manager's certificate (nothing for a public CA's).
    ca_option = ""
    if tls and tls.ca:
        ca_option = f" --ca {tls.ca}" if loopback else " --ca CA_FILE"
        say(f"  TLS: on, certificate {tls.cert}; clients verify it with {tls.ca} "
            "(other machines: a copy of it as --ca CA_FILE or TLS_CA_FILE)")
    elif tls:
        say(f"  TLS: on, certificate {tls.cert}; clients verify it with their trust store and certifi's CAs")
    else:
        say("  TLS: off")
    if sqlite:
        note = ("one batch at a time across all GPU workers; for several set "
                "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...") if gpu_pool_limit else "several batches allowed"
        say(f"  Prefect database: SQLite ({note})")
    else:
        say("  Prefect database: PostgreSQL")
    if loopback:
        say(f"  workers on this machine join with: ppcli worker -m {public}" + (" -p PASSWORD" if auth else "") + ca_option)
        if not auth:
            say("  GPU machines: run `ppcli manager --generate-password`, then restart the manager")
        return
    joining = f"ppcli worker -m {public}" + (" -p PASSWORD" if auth else "") + ca_option
    say(f"  GPU machines join with: {joining}")
    wheel = published_filename()  # the manager serves its checkout's wheel (deployments/wheel_index.py)
    if wheel:
        where = public.replace("://", "://worker:PASSWORD@", 1) if auth else public
        say(f'  GPU machines install this code with: pip install "podcastpile[worker] @ {where}/dist/{wheel}"'
            + (" --cert CA_FILE" if tls and tls.ca else "") + " (torch==2.13.0 first)")
    if auth and not tls:
        tell("warning", f"no TLS: the password travels in clear to {_url_host(host)}:{port}; serve HTTPS with "
             "--tls-cert/--tls-key or put a TLS reverse proxy (Caddy, nginx) in front, see docs/operate.md",
             style="yellow")
    elif not auth:
        tell("warning", f"--insecure: auth is off on {_url_host(host)}:{port}: anyone who can reach this port "
             "controls the pipeline (starts, cancels and deletes runs) and reads the database password",
             style="yellow")


def _bind_address(option: str | None, setting: str | None, auth: str | None, insecure: bool, port: int) -> str:
    """The address to serve on: `--host`, else HOST, else 0.0.0.0 with auth and 127.0.0.1
    without; a non-loopback address asked for without auth is refused unless `insecure`."""
    if option:
        host, asked = option, f"--host {option}"
    elif setting:
        host, asked = setting, f"HOST={setting}"
    else:
        return EVERY_ADDRESS if auth else LOOPBACK
    if auth or insecure or is_loopback(host):
        return host
    fail(f"refusing {asked} without auth: anyone who can reach port {port} would control the pipeline "
         "and read the database password; run `ppcli manager --generate-password` (writes WORKER_AUTH_ENABLED=true and "
         "WORKER_PASSWORD to .env), or serve 127.0.0.1, or add --insecure", code=EXIT_SETUP)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only: every address it
    stands for is a loopback address. A name that does not resolve is not."""
    try:
        return _loopback_address(host)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    try:
        return bool(found) and all(_loopback_address(str(info[4][0]).partition("%")[0]) for info in found)
    except ValueError:
        return False


def _loopback_address(text: str) -> bool:
    """Whether an IP address literal is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x);
    ValueError for something that is not an address."""
    address = ipaddress.ip_address(text)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _url_host(host: str) -> str:
    """`host` as a URL's host part: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _generate_password(env_file: Path, port: int | None) -> None:
    """Write WORKER_AUTH_ENABLED=true and a new WORKER_PASSWORD to `env_file` (created when
    missing, other lines kept, mode 0600) and print the password once with how workers join."""
    password = secrets.token_urlsafe(32)
    path = env_file.absolute()
    try:
        replaced = _write_auth_settings(path, password)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}", code=EXIT_FAILED)
    say(f"wrote WORKER_AUTH_ENABLED=true and a new WORKER_PASSWORD to {path} (mode 0600)"
        + ("; it replaces the previous password (restart the manager, give workers the new one)" if replaced else ""))
    say(f"WORKER_PASSWORD={password}")
    say("it is shown only this once (it stays in .env). Start the manager with `ppcli manager`; GPU "
        f"machines join with `ppcli worker -m http://{socket.gethostname()}:{port or _port_setting()}` and the "
        "password as WORKER_PASSWORD in their environment or .env (or -p PASSWORD, visible in ps)")
    shadowing = sorted(name for name in os.environ if name.upper() in ("WORKER_AUTH_ENABLED", "WORKER_PASSWORD"))
    if shadowing:
        tell("warning", f"the environment sets {' and '.join(shadowing)}, which wins over .env: unset "
             "it for the new password to take effect", style="yellow")


def _write_auth_settings(path: Path, password: str) -> bool:
    """Replace (or add) the auth lines in `path`, atomically and readable by its owner only.

    Every line that sets WORKER_AUTH_ENABLED or WORKER_PASSWORD goes (the last one would win);
    the new pair takes the place of the first. Returns whether a password was set before.
    """
    target = path.resolve()  # through a symlink: the file it names is what Settings reads
    try:
        lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    pair = ["WORKER_AUTH_ENABLED=true\n", f"WORKER_PASSWORD={password}\n"]
    kept: list[str] = []
    placed = replaced = False
    for line in lines:
        match = AUTH_SETTINGS.match(line)
        if not match:
            kept.append(line)
            continue
        if match.group(1).upper() == "WORKER_PASSWORD" and line.split("=", 1)[1].strip().strip("'\""):
            replaced = True
        if not placed:
            kept.extend(pair)
            placed = True
    if not placed:
        if kept and not kept[-1].endswith(("\n", "\r")):
            kept[-1] += "\n"
        kept.extend(pair)
    # A new file, created 0600 (mkstemp), replaces the old one: the password is never in a
    # file others may read, and an existing .env's looser mode goes with it.
    handle, temporary = tempfile.mkstemp(prefix=".env.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return replaced


def _port_setting() -> int:
    """PORT as the settings have it, or its default where the settings do not load."""
    try:
        return load_settings().port
    except SettingsError:
        return Settings.model_fields["port"].default


def _prefect_database_is_sqlite() -> bool:
    """Whether the server will keep its own state in SQLite (Prefect's default)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    return url is None or url.get_secret_value().startswith("sqlite")


def _code_stamp() -> tuple[float, ...]:
    """The newest modification time of the watched code and configuration."""
    stamps = [path.stat().st_mtime for folder in WATCHED for path in (ROOT / folder).rglob("*")
              if path.suffix in (".py", ".yaml", ".json") and path.is_file()]
    stamps += [(ROOT / name).stat().st_mtime for name in WATCHED_FILES if (ROOT / name).exists()]
    return (max(stamps, default=0.0), float(len(stamps)))
