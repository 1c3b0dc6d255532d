"""A worker that needs only the manager's address and password: the job API over plain HTTP.

    WORKER_PASSWORD=... python examples/http_worker.py https://manager:8000 [--once]

It asks for a job (`POST /api/jobs/request`), downloads the URL it is given, notes the start
with the audio's SHA-256 (a job whose audio another already has ends there as a duplicate),
runs `podcastpile.speech` on it and sends the result, or the failure, with the job's lease
token. Models, device and download limits come from the usual settings (.env, environment);
TLS_CA_FILE is the CA of an https:// manager with its own certificate. See docs/api.md.

Unlike `ppcli worker`, no Prefect and no database: one job at a time, no renewal of the lease
(keep JOB_TIMEOUT_HOURS above the longest episode). `--once` stops when no job is ready.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

import httpx

from podcastpile.config import Settings, load_settings
from podcastpile.errors import as_episode_error
from podcastpile.net.fetch import wayback_timestamp
from podcastpile.speech.nemo_models import SpeechModels
from podcastpile.speech.pipeline import fetch, process_downloaded
from podcastpile.version import code_version


class LeaseLost(Exception):
    """The manager answered 409: the lease expired or went to another worker; drop the job."""


def report(api: httpx.Client, job: dict[str, Any], step: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/jobs/{id}/{step} with the lease token; the answer, or LeaseLost."""
    answer = api.post(f"/api/jobs/{job['id']}/{step}", json={"lease_token": job["lease_token"], **body})
    if answer.status_code == 409:
        raise LeaseLost(answer.json()["detail"])
    answer.raise_for_status()
    return answer.json()


def work_on(api: httpx.Client, job: dict[str, Any], models: SpeechModels, settings: Settings) -> str:
    """Process one claimed job and report how it ended; returns the job's status."""
    try:
        try:
            capture = wayback_timestamp(job["url"]) if job["archived"] else None
            with fetch(job["url"], settings, capture) as downloaded:
                if report(api, job, "start", {"sha256": downloaded.sha256})["status"] == "duplicate":
                    return "duplicate"
                result = process_downloaded(downloaded, models, job["language"], live=not job["archived"])
        except (LeaseLost, httpx.HTTPStatusError):
            raise  # the manager's answers, not the episode's failures
        except Exception as error:  # every failure is the episode's, classified as the batch does
            failure = as_episode_error(error)
            return str(report(api, job, "fail", {"error_code": failure.code, "reason": failure.reason,
                                                "permanent": failure.permanent})["status"])
        report(api, job, "complete", {"result": result.to_dict()})
        return "completed"
    except LeaseLost as lost:
        return f"lease lost ({lost})"


def main() -> None:
    """Ask for jobs until stopped (or, with --once, until none is ready)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manager", help="The manager's address, e.g. https://manager:8000.")
    parser.add_argument("--worker-id", default=socket.gethostname())
    parser.add_argument("--once", action="store_true", help="Stop when no job is ready.")
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    args = parser.parse_args()
    settings = load_settings()
    password = os.environ.get("WORKER_PASSWORD") or (
        settings.worker_password.get_secret_value() if settings.worker_password else None)
    models = SpeechModels.from_settings(settings)
    ask = {"worker_id": args.worker_id, "languages": settings.languages, "code_version": code_version()}
    headers = {"X-Worker-Password": password} if password else {}
    with httpx.Client(base_url=args.manager.rstrip("/"), headers=headers, timeout=60,
                      verify=settings.tls_ca_file or True) as api:
        while True:
            answer = api.post("/api/jobs/request", json=ask)
            answer.raise_for_status()
            if answer.status_code == 204:
                if args.once:
                    return
                time.sleep(args.poll_seconds)
                continue
            job = answer.json()
            print(f"job {job['id']}: {work_on(api, job, models, settings)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
