"""The manager's own HTTP API: jobs (episodes), statistics and the workers' job protocol.

Served by `python -m deployments.server` on the manager's one port next to Prefect's API, so
it has the same TLS, the same login limit and the same password (`server.protect` wraps both).
Everything under `/api/jobs` and `/api/stats` comes here (`with_jobs_api`), the rest to Prefect.

  GET  /api/stats                    what `ppcli stats --json` prints
  POST /api/jobs                     add one job or a list (up to 10,000): added / present / rejected
  GET  /api/jobs?status=&language=&limit=&cursor=   pages by id (a cursor stable under inserts)
  GET  /api/jobs/{id}?full=          one job and its result's summary (`full`: the whole result)
  POST /api/jobs/retry | invalidate  `ppcli retry | invalidate`: a dry run unless `apply`
  POST /api/jobs/request             a worker claims one ready job: id, download URL, lease token
  POST /api/jobs/{id}/start | renew | complete | fail   with the lease token (409 once lost)

With a password every route wants it, as `X-Worker-Password` (the original manager's header)
or as Prefect's HTTP Basic credentials; a wrong one is a guess to the login limit. The check
and the 10 MB body limit run before a body is read (`Gate`). Errors are JSON: `{"detail": ...}`.

The routes' database work runs in the API's own threads, at most `API_THREADS` at once, and the
store's connection pools keep one connection for each (deployments/jobs_backend.py): with SQLAlchemy's default
pools under Starlette's 40 threads, 32 claiming workers made the manager open a new PostgreSQL
connection every three or four claims. Answers are encoded to JSON in those threads too.

`GET /api/stats`: the counts by status, expired leases, hours done and failures by reason are
read from the counters on every request; the archive stage's part and the held-by-runs and
refused-runs counts (a GROUP BY over the held leases and two calls to Prefect's API) come from
a snapshot at most `STATS_MAX_AGE_SECONDS` old, refreshed in the background every
`STATS_REFRESH_SECONDS` while requests come (deployments/stats_cache.py). The answer's
`X-Stats-As-Of` header says when that snapshot was taken.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

# The API's threads, pools and stats snapshot live in jobs_backend; the settings are re-exported.
from deployments.jobs_backend import API_THREADS as API_THREADS
from deployments.jobs_backend import STATS_MAX_AGE_SECONDS as STATS_MAX_AGE_SECONDS
from deployments.jobs_backend import STATS_REFRESH_SECONDS as STATS_REFRESH_SECONDS
from deployments.jobs_backend import JobsAPI
from deployments.login_limit import ASGIApp, Scope, credentials_verdict
from podcastpile.errors import PermanentError, TransientError
from podcastpile.jsonviews import LIST_STATUSES, episode_dict, operation_dict
from podcastpile.net.guard import private_address
from podcastpile.net.urls import display_url, mask_secrets
from podcastpile.sources import entry_from_record
from podcastpile.speech.result import EpisodeResult
from podcastpile.store import (
    Claim,
    LeaseLost,
    NewEpisode,
    Rejected,
    Selection,
    StoreUnavailable,
    UnknownEpisode,
    invalidate_selection,
    normalize_language,
    retry_selection,
)
from podcastpile.store.operations import RETRYABLE

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_JOBS_PER_REQUEST = 10_000
MAX_PAGE = 1000
# The claim loop gives up after this many claims in a row that have nothing to download.
_CLAIM_TRIES = 10



def is_jobs_path(path: str) -> bool:
    """Whether `path` is this API's (the rest of the port is Prefect's)."""
    return path in ("/api/stats", "/api/jobs") or path.startswith("/api/jobs/")


# --- request and answer bodies ----------------------------------------------------------------


class WorkerRequest(BaseModel):
    """A worker asking for a job."""

    worker_id: str = Field(min_length=1, max_length=200)
    languages: list[str] | None = Field(None, description="Only these languages (subtags included); none: any.")
    gpu: str | None = Field(None, max_length=200)
    code_version: str | None = Field(None, max_length=200)


class LeaseBody(BaseModel):
    """A call about a claimed job: the lease token `POST /api/jobs/request` handed out."""

    lease_token: str = Field(min_length=1, max_length=200)


class StartBody(LeaseBody):
    """Processing began; with the audio's SHA-256 a job whose audio another holds ends as duplicate."""

    sha256: str | None = Field(None, min_length=64, max_length=64)


class CompleteBody(LeaseBody):
    """The result, as the batch stores it (`podcastpile.speech.result.EpisodeResult`)."""

    result: dict[str, Any]


class FailBody(LeaseBody):
    """A failure: permanent ones fail the job, transient ones requeue it while attempts remain."""

    error_code: str = Field(min_length=1, max_length=64)
    reason: str = Field(max_length=2000)
    permanent: bool = False


class OperationBody(BaseModel):
    """An operator action over many jobs: a dry run (count and sample) unless `apply`."""

    apply: bool = Field(False, description="Apply; without it, only count and sample what would change (`--yes`).")
    sample: int = Field(10, ge=0, le=100, description="How many of the matching jobs a dry run shows.")


class RetryBody(OperationBody):
    """`ppcli retry`: failed (or duplicate) jobs back to the queue, attempts reset."""

    status: str = Field("failed", description=f"Which end state: {', '.join(s.value for s in RETRYABLE)}.")
    reason: str | None = Field(None, max_length=64, description="Only this error code, exactly (e.g. http-404).")
    since: datetime | None = Field(None, description="Only jobs changed at or after this time (no zone: UTC).")


class InvalidateBody(OperationBody):
    """`ppcli invalidate`: completed jobs back for reprocessing; every criterion given must match."""

    code_version: str | None = Field(None, max_length=200, description="Results made by this code version.")
    model: str | None = Field(None, max_length=500, description="Results made with this model id or weights fingerprint.")
    completed_after: datetime | None = Field(None, description="Results completed at or after this time (no zone: UTC).")


def naive_utc(when: datetime | None) -> datetime | None:
    """A time as the store keeps times (naive UTC): one without a zone is taken as UTC already."""
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def claim_answer(claim: Claim) -> dict[str, Any]:
    """What a worker gets for a claim: the download URL is the one the batch would fetch."""
    return {
        "id": claim.episode_id,
        "url": claim.download_url,
        "episode_url": claim.url,
        "archived": claim.archive_url is not None,
        "language": claim.language,
        "podcast_id": claim.podcast_id,
        "lease_token": claim.lease_token,
        "leased_until": claim.leased_until,
        "attempts": claim.attempts,
    }


def result_summary(result: dict[str, Any]) -> dict[str, Any]:
    """A stored result without its transcript, turns and segments (counted instead)."""
    turns = result.get("turns") or []
    summary = {key: value for key, value in result.items() if key not in ("turns", "segments", "text")}
    summary.update(turns=len(turns), segments=len(result.get("segments") or []),
                   words=sum(len(turn.get("words") or []) for turn in turns))
    return summary


def _masked(items: list[Rejected]) -> list[dict[str, Any]]:
    return [{"line": item.line, "url": display_url(item.url), "reason": mask_secrets(item.reason)} for item in items]


def _validation_text(error: ValidationError | RequestValidationError) -> str:
    """A pydantic error in one line: `where: what; ...` (the first ten)."""
    parts = [f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()[:10]]
    return "; ".join(parts)


# --- the routes' work, each run in one of the API's threads (`JobsAPI.run`) -------------------


def _add_jobs(jobs: JobsAPI, body: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    records = body if isinstance(body, list) else [body]
    if len(records) > MAX_JOBS_PER_REQUEST:
        raise HTTPException(413, f"at most {MAX_JOBS_PER_REQUEST:,} jobs per request, got {len(records):,}")
    rejected: list[Rejected] = []
    private: list[Rejected] = []  # stored, but downloads will refuse them
    episodes: list[NewEpisode] = []
    check_addresses = not jobs.settings.allow_private_addresses
    for line, record in enumerate(records, start=1):
        entry = entry_from_record(record, line)
        if isinstance(entry, Rejected):
            rejected.append(entry)
            continue
        blocked = private_address(entry.url) if check_addresses else None
        if blocked:
            private.append(Rejected(line, entry.url, blocked))
        episodes.append(entry)
    summary = jobs.store.add(episodes)
    rejected = sorted(rejected + summary.rejected, key=lambda item: item.line or 0)
    answer: dict[str, Any] = {"added": summary.added, "present": summary.present,
                              "rejected": _masked(rejected), "private_addresses": _masked(private)}
    if not isinstance(body, list):  # one job: the job itself too (`ppcli create` shows its id)
        found = jobs.store.find(episodes[0]) if episodes and not rejected else None
        answer["job"] = episode_dict(found) if found is not None else None
    return answer


def _get_job(jobs: JobsAPI, job_id: int, full: bool) -> dict[str, Any]:
    store = jobs.store
    job = episode_dict(store.get(job_id))
    result = store.result(job_id)
    job["result"] = result if full or result is None else result_summary(result)
    return job


def _operate(jobs: JobsAPI, selection: Selection, body: OperationBody) -> dict[str, Any]:
    # URLs in the sample as stored, as `GET /api/jobs` lists them: the caller may fetch them.
    return operation_dict(jobs.store, selection, apply=body.apply, sample=body.sample)


def _claim_one(jobs: JobsAPI, body: WorkerRequest, peer: str | None, languages: list[str] | None) -> Any:
    store = jobs.store
    for _ in range(_CLAIM_TRIES):
        claims = store.claim_batch(body.worker_id, 1, worker_ip=peer, gpu=body.gpu,
                                   code_version=body.code_version, languages=languages)
        if not claims:
            break
        if claims[0].download_url is not None:
            return claim_answer(claims[0])
        # As the batch does (flows/process.py): only archived copies may be fetched.
        store.fail(claims[0].episode_id, claims[0].lease_token,
                   PermanentError("not-archived", "no Internet Archive copy; refusing the live URL"))
    return Response(status_code=204)


def _start(jobs: JobsAPI, job_id: int, body: StartBody) -> dict[str, Any]:
    first = jobs.store.start(job_id, body.lease_token, body.sha256)
    if first is not None:
        return {"status": "duplicate", "duplicate_of": first}
    return {"status": "processing"}


def _complete(jobs: JobsAPI, job_id: int, body: CompleteBody) -> dict[str, Any]:
    try:
        result = EpisodeResult.from_dict(body.result)
    except ValidationError as error:
        raise HTTPException(422, f"malformed result: {_validation_text(error)}") from None
    jobs.store.complete(job_id, body.lease_token, result.to_dict())
    return {"status": "completed"}


def create_jobs_app(jobs: JobsAPI) -> FastAPI:
    """The API's routes over `jobs` (its store and settings); serve it through `with_jobs_api`."""
    app = FastAPI(title="Podcast Pile", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_text(error), "errors": jsonable_encoder(error.errors())}, 422)

    @app.exception_handler(Exception)
    async def crashed(_: Request, error: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets JSON without the internals.
        return JSONResponse({"detail": f"internal error ({type(error).__name__})"}, 500)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, error: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"episode store unavailable: {mask_secrets(str(error))}"}, 503)

    @app.exception_handler(LeaseLost)
    async def lease_lost(_: Request, error: LeaseLost) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 409)

    @app.exception_handler(UnknownEpisode)
    async def unknown(_: Request, error: UnknownEpisode) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 404)

    @app.get("/api/stats", tags=["Podcast Pile"], response_class=Response)
    async def stats() -> Response:
        """Counts by status, the archive stage, hours done, failures by reason: `ppcli stats --json`.

        The counts by status, expired leases, hours and failures are read now; the archive
        stage's part and the held-by-runs and refused-runs counts may be up to 15 s old: the
        `X-Stats-As-Of` header says when they were taken."""
        return await jobs.run(jobs.stats_response)

    @app.post("/api/jobs", tags=["Podcast Pile"], response_class=Response)
    async def add_jobs(
        body: Annotated[dict[str, Any] | list[dict[str, Any]], Body(
            description="One job or a list: `episode_url`, optional `language` and `podcast_id`.")],
    ) -> Response:
        """Add jobs as `ppcli import` does; `line` in the answer is the job's place in the list (from 1)."""
        return await jobs.run(_add_jobs, jobs, body)

    @app.get("/api/jobs", tags=["Podcast Pile"], response_class=Response)
    async def list_jobs(
        status: Annotated[str | None, Query(description=f"One of {', '.join(LIST_STATUSES)}.")] = None,
        language: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the page before.")] = None,
    ) -> Response:
        """Jobs, oldest first, a page at a time; `next_cursor` is null on the last page."""
        if status is not None and status not in LIST_STATUSES:
            raise HTTPException(422, f"unknown status {status!r}; choose from {', '.join(LIST_STATUSES)}")
        try:
            normalize_language(language)
            after = int(cursor) if cursor else None
        except ValueError as error:
            raise HTTPException(422, f"bad language or cursor: {error}") from None

        def page() -> dict[str, Any]:
            rows = jobs.store.list(status=status, language=language, limit=limit, after=after)
            return {"jobs": [episode_dict(row) for row in rows],
                    "next_cursor": str(rows[-1].id) if len(rows) == limit else None}

        return await jobs.run(page)

    @app.get("/api/jobs/{job_id}", tags=["Podcast Pile"], response_class=Response)
    async def get_job(job_id: int, full: bool = False) -> Response:
        """One job; with its result's summary once completed (`full=true`: the whole result, words included)."""
        return await jobs.run(_get_job, jobs, job_id, full)

    @app.post("/api/jobs/retry", tags=["Podcast Pile"], response_class=Response)
    async def retry(body: RetryBody) -> Response:
        """Failed (or duplicate) jobs back to the queue, as `ppcli retry --json` answers; a dry run unless `apply`."""
        try:
            selection = retry_selection(status=body.status, reason=body.reason, since=naive_utc(body.since))
        except ValueError as error:  # an unknown or non-retryable status
            raise HTTPException(422, str(error).splitlines()[0]) from None
        return await jobs.run(_operate, jobs, selection, body)

    @app.post("/api/jobs/invalidate", tags=["Podcast Pile"], response_class=Response)
    async def invalidate(body: InvalidateBody) -> Response:
        """Completed jobs back for reprocessing, as `ppcli invalidate --json` answers; a dry run unless `apply`."""
        try:
            selection = invalidate_selection(code_version=body.code_version, model=body.model,
                                             completed_after=naive_utc(body.completed_after))
        except ValueError:
            raise HTTPException(422, "say which results to invalidate: code_version, model or completed_after") from None
        return await jobs.run(_operate, jobs, selection, body)

    @app.post("/api/jobs/request", tags=["Podcast Pile workers"], response_class=Response,
              responses={200: {"description": "The job: id, download URL, lease token."},
                         204: {"description": "No job is ready."}})
    async def request_job(body: WorkerRequest, request: Request) -> Response:
        """Claim the oldest ready job; its lease token goes with every later call about it."""
        peer = request.client.host if request.client else None
        try:
            languages = [normalize_language(code) for code in body.languages or []] or None
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        return await jobs.run(_claim_one, jobs, body, peer, languages)

    @app.post("/api/jobs/{job_id}/start", tags=["Podcast Pile workers"], response_class=Response)
    async def start(job_id: int, body: StartBody) -> Response:
        """Processing began. With `sha256`, a job whose audio another job holds ends as duplicate."""
        return await jobs.run(_start, jobs, job_id, body)

    @app.post("/api/jobs/{job_id}/renew", tags=["Podcast Pile workers"], response_class=Response)
    async def renew(job_id: int, body: LeaseBody) -> Response:
        """Extend the lease by the lease length from now."""
        return await jobs.run(lambda: {"leased_until": jobs.store.renew(job_id, body.lease_token)})

    @app.post("/api/jobs/{job_id}/complete", tags=["Podcast Pile workers"], response_class=Response)
    async def complete(job_id: int, body: CompleteBody) -> Response:
        """Store the result (422 with the reason when it is not a valid EpisodeResult; nothing stored)."""
        return await jobs.run(_complete, jobs, job_id, body)

    @app.post("/api/jobs/{job_id}/fail", tags=["Podcast Pile workers"], response_class=Response)
    async def fail(job_id: int, body: FailBody) -> Response:
        """Record a failure; answers the job's new status (pending: it will be retried)."""
        kind = PermanentError if body.permanent else TransientError
        return await jobs.run(
            lambda: {"status": jobs.store.fail(job_id, body.lease_token, kind(body.error_code, body.reason)).value})

    return app


# --- serving -------------------------------------------------------------------------------------


async def _answer(send: Any, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI middleware before the API's app: the password, then the body's size, both decided
    before the app reads a byte of the body (a body without Content-Length is buffered up to
    the limit, and refused as soon as it passes it)."""

    def __init__(self, app: ASGIApp, password: str | None, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.password, self.max_body = app, password, max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if self.password is not None and credentials_verdict(headers, self.password) is not True:
            await _answer(send, 401, "Unauthorized: send the password as X-Worker-Password or HTTP Basic",
                          [(b"www-authenticate", b'Basic realm="Podcast Pile"')])
            return
        length = [value for name, value in headers if name.lower() == b"content-length"]
        if length:
            try:
                too_big = int(length[0]) > self.max_body
            except ValueError:
                await _answer(send, 400, "bad Content-Length")
                return
            if too_big:
                await _answer(send, 413, f"request body over {self.max_body:,} bytes")
                return
            await self.app(scope, receive, send)
            return
        buffered, chunks, more = 0, [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            buffered += len(chunks[-1])
            more = message.get("more_body", False)
            if buffered > self.max_body:
                await _answer(send, 413, f"request body over {self.max_body:,} bytes")
                return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def gated_paths(app: Any, inner: Any, password: str | None, is_inner: Callable[[str], bool]) -> ASGIApp:
    """One ASGI app: HTTP requests whose path `is_inner` to `inner` behind the password (`Gate`),
    everything else (the lifespan too) to `app`."""
    gated = Gate(inner, password)

    async def dispatch(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_inner(scope["path"]):
            await gated(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def with_jobs_api(prefect_app: Any, jobs_app: FastAPI, password: str | None) -> ASGIApp:
    """One ASGI app: this API's paths to `jobs_app` (behind its `Gate`), the rest (the lifespan
    too) to `prefect_app`, whose /docs then list this API's routes as well."""
    dispatch = gated_paths(prefect_app, jobs_app, password, is_jobs_path)

    prefect_openapi = prefect_app.openapi

    def openapi() -> dict[str, Any]:
        if prefect_app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = prefect_openapi()
            ours = get_openapi(title=jobs_app.title, version=jobs_app.version, routes=jobs_app.routes)
            schema.setdefault("paths", {}).update(ours.get("paths", {}))
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in ours.get("components", {}).get("schemas", {}).items():
                schemas.setdefault(name, definition)  # shared ones (validation errors) are Prefect's
            prefect_app.openapi_schema = schema
        return prefect_app.openapi_schema

    prefect_app.openapi = openapi
    return dispatch
