"""The Prefect UI, the operator's dashboard, as an operator sees it: with auth on, in a real browser.

`ppcli manager` runs with auth on (WORKER_AUTH_ENABLED, WORKER_PASSWORD): Prefect's server with
the deployments from prefect.yaml, and the stats artifact published by one run of the stats flow. Headless Chromium then opens each Prefect UI (v2 is the default one, v1
is one click away), is refused with a wrong password, logs in by typing the right one, and
opens the deployments list and the latest dashboard artifact. Screenshots of each step land in
the test's folder and in `test-output/ui/` for a person to look at.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from podcastpile.errors import PermanentError
from podcastpile.store import EpisodeStore, make_engine, migrate
from tests.browser import Browser, BrowserError
from tests.pipeline.conftest import pipeline_environment
from tests.manager import Manager
from tests.prefect_server import free_port
from tests.processes import stop_tree

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output" / "ui"  # git-ignored; kept after the run so a person can look
PASSWORD = "podcastpile-operator-password"  # WORKER_PASSWORD in a real setup
WIDTH, HEIGHT = 1440, 1200  # tall enough for the whole dashboard
DEPLOYMENTS = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]

# What the UIs show when something is wrong: a refused password, a failed API call, a missing
# page or artifact. A bare "404" is left out: it can occur in an artifact's hex id.
ERRORS = ("Authentication failed", "Invalid credentials", "Unauthorized", "Something went wrong",
          "Not Found", "Page not found", "Can't connect to Server API")
# The v1 login page itself asks the API for its version without the password and shows the
# refusal as "Oops. Something went wrong." messages (Prefect's behaviour, not ours): on the login
# page only a refused password counts; the pages after login must show none of ERRORS.
LOGIN_ERRORS = ("Authentication failed", "Invalid credentials", "Unauthorized", "Not Found", "Page not found")
# The wrong-password message each UI shows on its login page.
REFUSED = {"v2": "Invalid credentials", "v1": "Authentication failed"}


def run(args: list[str], env: dict[str, str]) -> None:
    """Run a command from the repository root; fail with its output if it fails."""
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ppcli manager` with auth on, as a new user starts it on one machine (Prefect's database
    SQLite, the episode database SQLite), plus a dashboard artifact; yields its URL."""
    home = tmp_path_factory.mktemp("ui-server")
    database = f"sqlite:///{home / 'episodes.db'}"
    env = {
        **os.environ, **pipeline_environment(database),
        "PREFECT_HOME": str(home / "prefect"), "WORKER_AUTH_ENABLED": "true", "WORKER_PASSWORD": PASSWORD,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    manager = Manager(env, home / "manager.log", free_port())
    try:
        manager.wait_ready()
        for name in ("first", "second", "third", "fourth"):
            run([sys.executable, "-m", "podcastpile.cli", "create", f"https://podcasts.example/{name}.mp3"], env)
        # One episode done and one failed, so every section of the dashboard has rows to show.
        engine = make_engine(database)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        done, failed = store.claim_batch("gpu-test/run-1", 2)
        store.complete(done.episode_id, done.lease_token, {"duration": 1800.0, "processing_seconds": 30.0})
        store.fail(failed.episode_id, failed.lease_token, PermanentError("not-found", "the host answered 404"))
        store.close()
        client = {**env, "PREFECT_API_URL": manager.api, "PREFECT_API_AUTH_STRING": PASSWORD}
        run([sys.executable, "-c", "from flows.stats import stats_flow; stats_flow()"], client)
        yield manager.url
    finally:
        stop_tree(manager.process, grace=60)


def test_api_refuses_calls_without_the_password(ui_server: str) -> None:
    api = f"{ui_server}/api"
    assert httpx.post(f"{api}/deployments/filter", json={}).status_code == 401
    assert httpx.get(f"{api}/docs").status_code == 401
    for path in ("/docs", "/redoc", "/openapi.json"):  # Prefect leaves these open; the manager does not
        assert httpx.get(f"{ui_server}{path}").status_code == 401, path
    assert httpx.get(f"{api}/openapi.json").status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"not-the-password").decode()}
    assert httpx.post(f"{api}/deployments/filter", json={}, headers=wrong).status_code == 401
    assert httpx.get(f"{api}/health").status_code == 200  # probes need no password
    right = {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}
    deployments = httpx.post(f"{api}/deployments/filter", json={}, headers=right)
    assert deployments.status_code == 200
    assert sorted(d["name"] for d in deployments.json()) == sorted(DEPLOYMENTS)


def check_screenshot(path: Path) -> None:
    """A PNG of the whole viewport, with more on it than an empty page compresses to."""
    assert path.is_file(), f"no screenshot at {path}"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert (width, height) == (WIDTH, HEIGHT), f"{path} is {width}x{height}"
    assert len(data) > 10_000, f"{path} is {len(data)} bytes: a blank page?"


@pytest.mark.parametrize("ui", ["v2", "v1"])
def test_operator_logs_in_and_sees_deployments_and_dashboard(ui_server: str, ui: str, tmp_path: Path) -> None:
    settings = httpx.get(f"{ui_server}/ui-settings").json()  # public: the UI reads it before login
    assert settings["auth"] == "BASIC" and ui in settings["available_uis"]
    ui_base = ui_server + settings[f"{ui}_base_url"].rstrip("/")
    shots = tmp_path / "screenshots"
    for stale in OUTPUT.glob(f"{ui}-*.png"):
        stale.unlink()  # a screenshot left from an earlier run must not pass for this one's

    def screenshot(name: str) -> None:
        path = browser.screenshot(shots / f"{ui}-{name}.png")
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, OUTPUT / path.name)

    with Browser(tmp_path / "chromium", width=WIDTH, height=HEIGHT) as browser:
        try:
            # Any page sends a browser without the password to the login form. (v1 first tries
            # the page's API calls and shows their refusals as messages; the form follows.)
            browser.open(f"{ui_base}/deployments")
            login = browser.wait_for(
                "document.querySelector('input[type=password]') && location.pathname.endsWith('/login') && location.href",
                what="the login form", refuse=("Not Found", "Page not found"))

            def fresh_login_page() -> None:
                """The login page loaded anew: the form, and no message left from before."""
                browser.open(login)
                browser.wait_for("!!document.querySelector('input[type=password]')", what="the login form",
                                 refuse=LOGIN_ERRORS)
                browser.wait_for_text("Login", refuse=LOGIN_ERRORS)

            fresh_login_page()
            screenshot("1-login")

            browser.type_into("input[type=password]", "not-the-password")
            browser.click("button[type=submit]")
            browser.wait_for_text(REFUSED[ui])
            assert browser.evaluate("!!document.querySelector('input[type=password]')"), "let in without the password"
            screenshot("2-wrong-password")

            # Retype on a fresh page, as a person reloading would: v1's refusal message stays up
            # until the page is reloaded, and must not count as a refusal of the right password.
            fresh_login_page()
            browser.type_into("input[type=password]", PASSWORD)
            browser.click("button[type=submit]")
            browser.wait_for("!document.querySelector('input[type=password]') && !location.pathname.endsWith('/login')",
                             what="leaving the login page", refuse=LOGIN_ERRORS)

            # The deployments list, with every deployment from prefect.yaml as a link.
            browser.open(f"{ui_base}/deployments")
            browser.wait_for(
                f"(() => {{ const links = [...document.querySelectorAll('a[href*=\"/deployments/deployment/\"]')]"
                f".map(a => a.innerText.trim()); return {json.dumps(DEPLOYMENTS)}.every(n => links.includes(n)); }})()",
                what=f"deployments {DEPLOYMENTS}", refuse=ERRORS,
            )
            browser.wait_for_text(f"{len(DEPLOYMENTS)} Deployments", refuse=ERRORS)
            screenshot("3-deployments")

            # The dashboard's key lists its versions; the newest one shows the Markdown.
            browser.open(f"{ui_base}/artifacts/key/podcastpile-dashboard")
            browser.wait_for_text("podcastpile-dashboard", "Episodes by status, throughput, failures, queue ETA",
                                  "Flow run", refuse=ERRORS)
            screenshot("4-dashboard-key")
            browser.click("a[href*='/artifacts/artifact/']")
            browser.wait_for_text("Podcast Pile —", "total", "Workers, last 24 h", "gpu-test",
                                  "Top failure reasons", "not-found", refuse=ERRORS)
            screenshot("5-dashboard")
        except BaseException:
            try:
                screenshot("failure")  # what the page showed when it went wrong
            except BrowserError:
                pass  # the browser itself failed; keep the original error
            raise

    for name in ("1-login", "2-wrong-password", "3-deployments", "4-dashboard-key", "5-dashboard"):
        check_screenshot(OUTPUT / f"{ui}-{name}.png")
