"""Prefect's server (API, UI, services) as `prefect server start` runs it, with the docs closed
and password guessing limited.

With PREFECT_SERVER_API_AUTH_STRING set, Prefect guards everything under /api but still
serves the root app's `/docs`, `/redoc` and `/openapi.json` to anyone. The manager promises
that without the password only health and readiness answer, so this wraps Prefect's app and
asks for the same password there (HTTP Basic: a browser shows its login box; any user name).
Around that, `LoginLimit` (deployments/login_limit.py) counts wrong passwords per client
address on everything served on the port and answers 429 to an address that keeps guessing.

X-Forwarded-For is ignored (uvicorn would trust it from 127.0.0.1) unless the proxy that
sends it is named: `--trusted-proxy ADDRESS` (repeatable; an address or a network) or
TRUSTED_PROXIES (comma-separated; FORWARDED_ALLOW_IPS, uvicorn's name, is taken too). Then the
forwarded address is the client's everywhere: the login limit's, and the IP a claiming worker is
recorded with (deployments/jobs_api.py). See docs/security.md.

With `--ssl-certfile` and `--ssl-keyfile` (`ppcli manager --tls-cert/--tls-key`) uvicorn
serves HTTPS, and only HTTPS, for everything on the port: API, UI, docs, websockets.

Next to Prefect's API, the manager's own (deployments/jobs_api.py: /api/jobs, /api/stats) is
served on the same port, behind the same password, limit and TLS; so is the wheel of this
checkout that GPU machines install (deployments/wheel_index.py: /simple/, /dist/).

Run by `ppcli manager` as `python -m deployments.server --host H --port P`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.login_limit import ASGIApp, LoginLimit, Scope, header_verdict
from podcastpile.prefect_api import PrefectAPI

if TYPE_CHECKING:
    from podcastpile.config import Settings

DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class DocsNeedPassword:
    """ASGI middleware: the root app's API docs answer 401 unless the request carries the password."""

    def __init__(self, app: ASGIApp, password: str) -> None:
        self.app = app
        self.password = password

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in DOCS and not self._authorized(scope):
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Basic realm="Podcast Pile"'),
            ]})
            await send({"type": "http.response.body", "body": b'{"exception_message": "Unauthorized"}'})
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        # Prefect's clients send the auth string itself; a browser sends `user:password`.
        return header_verdict(scope.get("headers") or [], self.password) is True


def protect(app: ASGIApp, password: str | None, trusted_proxies: Sequence[str] = (), **limits: Any) -> ASGIApp:
    """`app` as the manager serves it: with a password, the docs closed and guessing limited
    (`limits`: LoginLimit's attempts, window, max_clients); X-Forwarded-For honoured only from
    `trusted_proxies`."""
    if password is not None:
        app = LoginLimit(DocsNeedPassword(app, password), password, **limits)
    if trusted_proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted_proxies))  # type: ignore[arg-type]
    return app


def trusted_proxies_from(flags: Sequence[str] | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The proxies whose X-Forwarded-For counts: the flags, else TRUSTED_PROXIES, else
    FORWARDED_ALLOW_IPS (the name uvicorn and the original manager's docs use); none by default."""
    named = environ.get("TRUSTED_PROXIES") or environ.get("FORWARDED_ALLOW_IPS") or ""
    values = list(flags or []) or named.split(",")
    return [value.strip() for value in values if value.strip()]


def own_api(host: str, port: int, password: str | None, certfile: str | None, ca_file: str | None = None) -> PrefectAPI:
    """This server's Prefect API as a client on this machine reaches it (loopback when it is
    bound to every address): the job API's stats ask it which runs are dead, as `ppcli stats`
    does. Over https its certificate is verified with `ca_file` (TLS_CA_FILE), else with the
    certificate file itself (a self-signed one or one with its CA appended); a certificate that
    does not name the loopback address leaves those counts unknown, with that reason."""
    name = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    name = f"[{name}]" if ":" in name else name
    scheme = "https" if certfile else "http"
    ca = ca_file or certfile
    return PrefectAPI(f"{scheme}://{name}:{port}/api", auth_string=password,
                      ca_file=os.path.abspath(os.path.expanduser(ca)) if certfile and ca else None)


def job_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The project's settings for the job API: from PODCASTPILE_ENV_FILE, the .env of the
    directory `ppcli manager` ran in (the server itself runs in the checkout), else ./.env;
    the environment wins over either, as for every command. A relative SQLite path is taken
    from that directory too, where the manager's own commands find the database."""
    from podcastpile.config import load_settings

    env_file = environ.get("PODCASTPILE_ENV_FILE")
    settings = load_settings(env_file=env_file or ".env")
    prefix = "sqlite:///"
    path = settings.database_url.removeprefix(prefix)
    if env_file and settings.database_url.startswith(prefix) and path and not path.startswith(("/", ":memory:", "file:")):
        where = Path(env_file).parent / Path(path).expanduser()
        settings = load_settings(env_file=env_file, database_url=prefix + str(where.absolute()))
    return settings


def _log_to_stderr() -> None:
    """The limiter's warnings reach the server's output whatever Prefect's logging does."""
    logger = logging.getLogger("podcastpile.manager")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    """Serve Prefect's app (API, UI and, unless disabled, its services) on one port."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--trusted-proxy", action="append", metavar="ADDRESS",
                        help="A reverse proxy (address or network) whose X-Forwarded-For names the client "
                             "(repeatable; default: TRUSTED_PROXIES or FORWARDED_ALLOW_IPS, else none).")
    parser.add_argument("--ssl-certfile", metavar="FILE", help="Serve HTTPS with this certificate (PEM).")
    parser.add_argument("--ssl-keyfile", metavar="FILE", help="The certificate's private key (PEM).")
    args = parser.parse_args()
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        parser.error("--ssl-certfile and --ssl-keyfile go together")

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings

    from deployments.idle import longer_pubsub_waits, quiet_uvicorn_server, slower_task_queue
    from deployments.jobs_api import JobsAPI, create_jobs_app, with_jobs_api
    from deployments.wheel_index import WheelPublisher, create_wheel_app, with_wheel_index

    _log_to_stderr()
    settings = get_current_settings()
    secret = settings.server.api.auth_string
    password = None if secret is None else secret.get_secret_value()
    config = job_settings()
    jobs = create_jobs_app(JobsAPI(config, prefect_api=own_api(
        args.host, args.port, password, args.ssl_certfile, config.tls_ca_file)))
    slower_task_queue()
    longer_pubsub_waits()
    publisher = WheelPublisher.for_checkout(Path(settings.home))
    publisher.start()  # builds in the background after the manager's start, or at the first request
    served = with_jobs_api(create_app(final=True), jobs, password)
    app = protect(with_wheel_index(served, create_wheel_app(publisher), password), password,
                  trusted_proxies_from(args.trusted_proxy))
    served_by = uvicorn.Config(
        app, host=args.host, port=args.port,
        proxy_headers=False,  # `protect` decides which proxies to believe
        timeout_keep_alive=settings.server.api.keepalive_timeout,
        log_level=settings.server.logging_level.lower(),
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
    )
    server = (quiet_uvicorn_server() or uvicorn.Server)(served_by)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run ends: it could not bind or start the app
        sys.exit(3)


if __name__ == "__main__":
    main()
