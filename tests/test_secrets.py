"""Passwords are never printed: settings errors, repr(settings), CLI output, download reasons.

The store keeps episode URLs as given (`ppcli list --json` too, for scripts); everything shown
to people has `user:***@` instead of `user:password@`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from podcastpile.archive.stage import describe_event
from podcastpile.config import load_settings, normalize_database_url, safe_database_url
from podcastpile.errors import EpisodeError
from podcastpile.net.fetch import download
from podcastpile.net.guard import AddressGuard
from podcastpile.net.urls import display_url, mask_secrets
from tests.loopback import LoopbackServer, Reply
from tests.test_cli import ppcli

SECRET = "S3cret"


@pytest.mark.parametrize(
    ("database_url", "message"),
    [
        ("postgresq://user:S3cret@localhost/db", "unsupported database 'postgresq'"),
        ("mysql://user:S3cret@localhost/db", "unsupported database 'mysql'"),
        ("user:S3cret@host", "cannot parse"),
        ("postgresql://user:S3cret@localhost:notaport/db", "cannot parse"),
        ("postgresql://user:pa/S3cret@x@localhost:notaport/db", "cannot parse"),  # '/' and '@' in it
        ("postgresql://user@127.0.0.1:9/db?password=S3cret", "cannot open the episode database"),
        ("postgresql://user:S3cret@127.0.0.1:9/db", "cannot open the episode database"),
    ],
)
def test_bad_database_url_is_one_line_without_its_password(tmp_path: Path, database_url: str, message: str) -> None:
    result = ppcli("stats", cwd=tmp_path, env={"DATABASE_URL": database_url})
    assert result.returncode == 2
    assert message in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert "***" in result.stderr  # the value is still shown, masked, so the user sees which one
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"IA_SECRET_KEY": SECRET},  # without IA_ACCESS_KEY
        {"WORKER_AUTH_ENABLED": "maybe", "WORKER_PASSWORD": SECRET},
    ],
)
def test_other_settings_errors_hide_secrets(tmp_path: Path, env: dict[str, str]) -> None:
    result = ppcli("stats", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "invalid settings" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:S3cret@db:5432/pile",
        "postgresql://user:p@S3cret@db/pile",  # SQLAlchemy ends the password at the first '@'
        "postgresql://user@db/pile?sslmode=require&password=S3cret",
        "postgresql+psycopg://user:S3cret@db/pile",
        "postgresq://user:S3cret@db/pile",
        "user:S3cret@db",
        "postgresql://user:S3cret@db:port/pile",
    ],
)
def test_safe_database_url_hides_every_form_of_password(url: str) -> None:
    shown = safe_database_url(url)
    assert SECRET not in shown and "***" in shown
    assert shown.startswith(url.split("user", 1)[0])  # scheme (and what precedes the user) kept


def test_repr_of_settings_hides_every_secret() -> None:
    settings = load_settings(
        env_file=None, database_url=f"postgresql://user:{SECRET}@db/pile", ia_access_key="AK" + SECRET,
        ia_secret_key="SK" + SECRET, worker_auth_enabled=True, worker_password="WP" + SECRET,
        wayback_url=f"https://mirror:{SECRET}@wayback.example",
    )
    assert settings.database_url == f"postgresql://user:{SECRET}@db/pile"  # the store still gets it
    assert SECRET in normalize_database_url(settings.database_url)
    for shown in (repr(settings), str(settings), f"{settings!r}"):
        assert SECRET not in shown
        assert "postgresql://user:***@db/pile" in shown


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("https://user:S3cret@host/ep.mp3", "https://user:***@host/ep.mp3"),
        ("https://user:S3c@ret@host/ep.mp3", "https://user:***@host/ep.mp3"),
        ("https://:S3cret@host/ep.mp3", "https://:***@host/ep.mp3"),
        ("https://user@host/ep.mp3", "https://user@host/ep.mp3"),
        ("https://host:8080/a:b@c.mp3?q=x:y@z", "https://host:8080/a:b@c.mp3?q=x:y@z"),  # no userinfo
        ("https://host/ep.mp3?password=S3cret&x=1", "https://host/ep.mp3?password=***&x=1"),
    ],
)
def test_display_url(raw: str, shown: str) -> None:
    assert display_url(raw) == shown


def test_mask_secrets_in_free_text() -> None:
    line = (f"archived: https://web.archive.org/web/2024id_/http://u:{SECRET}@h/x.mp3; "
            f"see 'user:{SECRET}@db' and (ftp://a:{SECRET}@b/)")
    masked = mask_secrets(line)
    assert SECRET not in masked
    assert masked.count("***") == 3
    assert describe_event("looking-up", f"http://u:{SECRET}@h/x.mp3") == "looking up an existing capture of http://u:***@h/x.mp3"


def test_cli_never_shows_an_episode_password(database_url: str, tmp_path: Path) -> None:
    url = f"https://user:{SECRET}@127.0.0.1:9/x.mp3"
    created = ppcli("create", url, cwd=tmp_path, database_url=database_url)
    assert created.returncode == 0, created.stderr
    assert "https://user:***@127.0.0.1:9/x.mp3" in created.stdout
    again = ppcli("create", url, cwd=tmp_path, database_url=database_url)
    assert "already present" in again.stdout
    source = tmp_path / "urls.txt"
    source.write_text(f"https://user:{SECRET}@example.com/a.mp3\nhttps://user:{SECRET}@exa mple.com/b.mp3\n")
    imported = ppcli("import", str(source), cwd=tmp_path, database_url=database_url)
    assert "added 1, already present 0, rejected 1" in imported.stdout
    refused = ppcli("create", f"https://user:{SECRET}@exa mple.com/b.mp3", cwd=tmp_path, database_url=database_url)
    assert refused.returncode == 1 and "whitespace" in refused.stderr
    # An error reason quoting the URL, as rows written before reasons were masked have.
    engine = create_engine(normalize_database_url(database_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE episodes SET error = :error"), {"error": f"connection refused: {url}"})
    engine.dispose()

    listed = ppcli("list", cwd=tmp_path, database_url=database_url)
    stats = ppcli("stats", cwd=tmp_path, database_url=database_url)
    for result in (created, again, imported, refused, listed, stats):
        assert SECRET not in result.stdout + result.stderr, result.args
    assert listed.stdout.count("user:***@") == 4  # two URLs, two errors: there, and masked

    rows = json.loads(ppcli("list", "--json", cwd=tmp_path, database_url=database_url).stdout)
    assert {row["url"] for row in rows} == {url, f"https://user:{SECRET}@example.com/a.mp3"}  # as stored


@pytest.fixture
def failing_host() -> Iterator[LoopbackServer]:
    """A redirect loop and a stall: failures whose reasons quote the URL."""
    release = threading.Event()

    def stall(request):  # type: ignore[no-untyped-def]
        def body() -> Iterator[bytes]:
            yield b"ID3"
            release.wait(30)
        return Reply(200, body(), {"Content-Type": "audio/mpeg"})

    routes = {"/loop.mp3": lambda request: Reply(302, b"", {"Location": "/loop.mp3"}), "/stall.mp3": stall}
    with LoopbackServer(routes) as server:
        yield server
        release.set()


@pytest.mark.parametrize(
    ("path", "code"),
    [("/loop.mp3", "too-many-redirects"), ("/stall.mp3", "timeout"), (None, "connection"), ("ftp", "bad-url")],
)
def test_download_error_reasons_hide_the_password(failing_host: LoopbackServer, path: str | None, code: str) -> None:
    if path is None:
        url = f"http://user:{SECRET}@127.0.0.1:9/x.mp3"  # nothing listens on 127.0.0.1:9
    elif path == "ftp":
        url = f"ftp://user:{SECRET}@127.0.0.1/x.mp3"
    else:
        url = f"http://user:{SECRET}@127.0.0.1:{failing_host.port}{path}"
    with pytest.raises(EpisodeError) as raised:
        with download(url, max_bytes=10**6, timeout_seconds=1, guard=AddressGuard(allow=lambda address: True)):
            pass
    assert raised.value.code == code
    assert SECRET not in str(raised.value)
    assert "user:***@127.0.0.1" in raised.value.reason  # the URL is still there to read


def test_transcribe_error_hides_the_password(tmp_path: Path) -> None:
    result = ppcli("transcribe", f"http://user:{SECRET}@127.0.0.1:9/x.mp3", cwd=tmp_path,
                   env={"ALLOW_PRIVATE_ADDRESSES": "true", "DOWNLOAD_TIMEOUT_SECONDS": "2"})
    assert result.returncode == 1
    assert "connection" in result.stderr and "user:***@127.0.0.1:9" in result.stderr
    assert SECRET not in result.stdout + result.stderr
