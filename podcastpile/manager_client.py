"""A client of the manager's own HTTP API (deployments/jobs_api.py, docs/api.md).

`ppcli create | import | list | stats | retry | invalidate -m URL` (or MANAGER_URL) call these
instead of opening the database: a machine with the manager's address and the worker password,
and no DATABASE_URL, manages the queue. The address, password and CA come from
`podcastpile.prefect_api.find_prefect_api`, the rule every command follows; the password goes
as HTTP Basic credentials, as Prefect's clients send it (the API takes that or X-Worker-Password).

Every failure is a `ManagerError` whose message is one line for the operator, without the
password: the manager unreachable, a refused password (401, 429), a request too large (413) or
refused (422), or anything else the manager answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import httpx

from podcastpile.prefect_api import PrefectAPI

if TYPE_CHECKING:
    import ssl

TIMEOUT_SECONDS = 60.0  # a batch of 10,000 jobs into a busy database takes seconds, not minutes
MAX_JOBS_PER_REQUEST = 10_000  # the API's limit (more is 413)
MAX_BODY_BYTES = 8 * 1024 * 1024  # under the API's 10 MB, with room for the JSON around the jobs
MAX_PAGE = 1000  # the most jobs `GET /api/jobs` answers at once


class ManagerError(RuntimeError):
    """The manager could not do what was asked; the message is one line for the operator.

    `setup`: fix the setup (the address, the password, the CA), not the input. `cause`: the
    transport error when the manager could not be reached at all.
    """

    def __init__(self, message: str, *, status: int | None = None, setup: bool = False,
                 cause: httpx.HTTPError | None = None) -> None:
        super().__init__(message)
        self.status, self.setup, self.cause = status, setup, cause


class ManagerClient:
    """The manager's job API at `api.address`, with `api`'s password and CA. Use it as a context
    manager (or `close()` it): it keeps one connection open across calls."""

    def __init__(self, api: PrefectAPI, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.api = api
        self.where = api.address
        if urlsplit(api.url).scheme not in ("http", "https"):
            raise ManagerError(f"the manager address must be a URL such as http://manager:8000, not {self.where!r}",
                               setup=True)
        self._http = httpx.Client(base_url=self.where, headers=api.headers(), verify=_verify(api), timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def stats(self) -> dict[str, Any]:
        """`GET /api/stats`: what `ppcli stats --json` prints."""
        return self._call("GET", "/api/stats")

    def add(self, jobs: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, Any]:
        """`POST /api/jobs`: one job (the answer then carries it as `job`) or a list of up to
        10,000; answers `added`, `present`, `rejected` and `private_addresses`."""
        return self._call("POST", "/api/jobs", json=jobs)

    def jobs(self, *, status: str | None = None, language: str | None = None,
             limit: int | None = None) -> Iterator[dict[str, Any]]:
        """`GET /api/jobs`, oldest first, page after page until `limit` jobs (None: all)."""
        cursor: str | None = None
        left = limit
        while left is None or left > 0:
            size = MAX_PAGE if left is None else min(left, MAX_PAGE)
            params = {key: value for key, value in
                      {"status": status, "language": language, "limit": size, "cursor": cursor}.items()
                      if value is not None}
            page = self._call("GET", "/api/jobs", params=params)
            yield from page["jobs"]
            if left is not None:
                left -= len(page["jobs"])
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def retry(self, **body: Any) -> dict[str, Any]:
        """`POST /api/jobs/retry` (status, reason, since, apply): what `ppcli retry --json` prints."""
        return self._call("POST", "/api/jobs/retry", json=body)

    def invalidate(self, **body: Any) -> dict[str, Any]:
        """`POST /api/jobs/invalidate` (code_version, model, completed_after, apply): what
        `ppcli invalidate --json` prints."""
        return self._call("POST", "/api/jobs/invalidate", json=body)

    def _call(self, method: str, path: str, **request: Any) -> Any:
        """The JSON answer of one request; `ManagerError` with one line for anything else."""
        try:
            answer = self._http.request(method, path, **request)
        except httpx.HTTPError as error:
            raise ManagerError(f"cannot reach the manager at {self.where}: {_reason(error)}", setup=True,
                               cause=error) from None
        if answer.status_code == 200:
            try:
                return answer.json()
            except ValueError:
                raise ManagerError(f"the manager at {self.where} answered {method} {path} with something other "
                                   "than JSON: is that address Podcast Pile's manager?", setup=True) from None
        raise _refusal(self.where, method, path, answer, password=self.api.auth_string is not None)


def _refusal(where: str, method: str, path: str, answer: httpx.Response, *, password: bool) -> ManagerError:
    """One line for an answer other than 200, by what the operator has to change."""
    status, detail = answer.status_code, _detail(answer)
    if status == 401:
        if password:
            return ManagerError(f"the manager at {where}: wrong worker password (-p/--password or WORKER_PASSWORD)",
                                status=status, setup=True)
        return ManagerError(f"the manager at {where} requires the worker password (-p/--password or WORKER_PASSWORD)",
                            status=status, setup=True)
    if status == 429:
        return ManagerError(f"the manager at {where} refuses this address for now after wrong passwords: {detail}",
                            status=status, setup=True)
    if status == 413:
        return ManagerError(f"the manager at {where} refused the request as too large: {detail}", status=status)
    if status == 422:
        return ManagerError(f"the manager at {where} refused the request: {detail}", status=status)
    if status in (404, 405) and detail in ("Not Found", "Method Not Allowed"):  # no such route there
        return ManagerError(f"the manager at {where} has no {method} {path} (an older version, or not Podcast "
                            "Pile's manager?)", status=status, setup=True)
    return ManagerError(f"the manager at {where} answered {status} to {method} {path}: {detail}",
                        status=status, setup=status >= 500)


def _detail(answer: httpx.Response) -> str:
    """The API's `{"detail": ...}` in one line, else the start of the body as text."""
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        detail = answer.text[:200] or answer.reason_phrase
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return " ".join(text.split())


def _verify(api: PrefectAPI) -> ssl.SSLContext | bool:
    """What an https:// manager is verified with (the same CAs `ppcli worker` uses)."""
    import ssl

    if urlsplit(api.url).scheme != "https":
        return True
    try:
        return api.ssl_context()
    except (OSError, ssl.SSLError) as error:
        reason = "no PEM certificate in it" if isinstance(error, ssl.SSLError) else (error.strerror or str(error))
        raise ManagerError(f"cannot read the CA file {api.ca_file or 'of the default CA bundle'} (--ca, TLS_CA_FILE "
                           f"or PREFECT_API_SSL_CERT_FILE): {reason}", setup=True) from None


def _reason(error: Exception) -> str:
    """One line for a transport error (some have empty or multi-line messages)."""
    return " ".join(str(error).split()) or type(error).__name__
