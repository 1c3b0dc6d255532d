# A Podcast Pile GPU worker: the project's wheel with its `worker` extra on a CUDA runtime, running
# `ppcli worker`. Build it from the wheel the fleet runs (it carries the code version the manager
# deploys, docs/operate.md#a-worker-image):
#   python -m pip wheel --no-deps . -w dist && docker build -t podcastpile-worker .
#   docker run --gpus all -e MANAGER_URL=http://manager:8000 -e WORKER_PASSWORD=... podcastpile-worker
#   docker stop -t 90 <container>     # more than --grace (60 s): the batch gives its episodes back
# tests/test_worker_dockerfile.py checks this file statically and with hadolint; no image is built by the tests.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/podcastpile \
    PATH=/opt/podcastpile/bin:$PATH

# A pipe in a RUN fails the build when any part of it fails, not only its last command.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (Ubuntu 22.04 ships 3.10) from deadsnakes; ffmpeg for audio decoding; tini reaps
# the processes a batch leaves to PID 1 (its claim guard) and passes `docker stop`'s SIGTERM on.
# Not pinned to versions: the PPA and the security archive replace them, and a pin that no
# longer exists breaks every build; the image's Python and CUDA come from the base's tag.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ffmpeg libsndfile1 tini ca-certificates \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv "$VIRTUAL_ENV"

# torch before NeMo: otherwise NeMo's resolver pulls another multi-GB CUDA build (README).
RUN pip install torch==2.13.0

COPY dist/podcastpile-*.whl /tmp/wheels/
# The wheel is the pin (one file, its code version in its name); its extra pins torch and NeMo.
# hadolint ignore=DL3013
RUN set -e; \
    wheel="$(ls /tmp/wheels/podcastpile-*.whl)"; \
    if [ "$(printf '%s\n' "$wheel" | wc -l)" != 1 ]; then echo "dist/ must hold exactly one podcastpile wheel" >&2; exit 1; fi; \
    pip install "${wheel}[worker]"; \
    rm -rf /tmp/wheels; \
    ppcli worker --help >/dev/null

# Not root: a flow run is code fetched from the internet's audio, decoded by ffmpeg and NeMo.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin podcastpile
# By number: a runtime that checks for a non-root user (Kubernetes' runAsNonRoot) can tell.
USER 10001:10001
# Flow runs start here (an installed worker's run directory): mount a .env here if wanted, and a
# volume on ~/.cache to keep downloaded models across containers.
WORKDIR /home/podcastpile

# No HEALTHCHECK: `ppcli worker` exits when one of its workers dies (a restart policy starts it
# again), and whether the worker is polling shows on the manager (the pool's workers, ppcli stats).
HEALTHCHECK NONE

# `docker stop` sends SIGTERM to PID 1 (tini), which passes it to `ppcli worker`: one graceful stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "ppcli", "worker"]
# One worker per GPU the container sees; give other options instead (e.g. --gpus 0 --languages en).
CMD ["--all-gpus"]
