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
TRUSTED_PROXIES (comma-separated). See docs/security.md.

With `--ssl-certfile` and `--ssl-keyfile` (`ppcli manager --tls-cert/--tls-key`) uvicorn
serves HTTPS, and only HTTPS, for everything on the port: API, UI, docs, websockets.

Run by `ppcli manager` as `python -m deployments.server --host H --port P`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from deployments.login_limit import ASGIApp, LoginLimit, Scope, header_verdict

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
    """The proxies whose X-Forwarded-For counts: the flags, else TRUSTED_PROXIES; none by default."""
    values = list(flags or []) or environ.get("TRUSTED_PROXIES", "").split(",")
    return [value.strip() for value in values if value.strip()]


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
                             "(repeatable; default: TRUSTED_PROXIES, else none).")
    parser.add_argument("--ssl-certfile", metavar="FILE", help="Serve HTTPS with this certificate (PEM).")
    parser.add_argument("--ssl-keyfile", metavar="FILE", help="The certificate's private key (PEM).")
    args = parser.parse_args()
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        parser.error("--ssl-certfile and --ssl-keyfile go together")

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings

    _log_to_stderr()
    settings = get_current_settings()
    password = settings.server.api.auth_string
    app = protect(create_app(final=True), None if password is None else password.get_secret_value(),
                  trusted_proxies_from(args.trusted_proxy))
    uvicorn.run(
        app, host=args.host, port=args.port,
        proxy_headers=False,  # `protect` decides which proxies to believe
        timeout_keep_alive=settings.server.api.keepalive_timeout,
        log_level=settings.server.logging_level.lower(),
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
    )


if __name__ == "__main__":
    main()
