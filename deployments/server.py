"""Prefect's server (API, UI, services) as `prefect server start` runs it, with the docs closed too.

With PREFECT_SERVER_API_AUTH_STRING set, Prefect guards everything under /api but still
serves the root app's `/docs`, `/redoc` and `/openapi.json` to anyone. The manager promises
that without the password only health and readiness answer, so this wraps Prefect's app and
asks for the same password there (HTTP Basic: a browser shows its login box; any user name).

Run by `ppcli manager` as `python -m deployments.server --host H --port P`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

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
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Prefect's clients send the auth string itself; a browser sends `user:password`.
        return hmac.compare_digest(decoded, self.password) or hmac.compare_digest(
            decoded.partition(":")[2], self.password
        )


def main() -> None:
    """Serve Prefect's app (API, UI and, unless disabled, its services) on one port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args()

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    app: Any = create_app(final=True)
    password = settings.server.api.auth_string
    if password is not None:
        app = DocsNeedPassword(app, password.get_secret_value())
    uvicorn.run(
        app, host=args.host, port=args.port,
        timeout_keep_alive=settings.server.api.keepalive_timeout,
        log_level=settings.server.logging_level.lower(),
    )


if __name__ == "__main__":
    main()
