#!/usr/bin/env bash
# The main job on embedded defaults, offline, on the default path (archive first):
#  - a local podcast host serves the bundled two-speaker clip, splicing a different "ad" into
#    every response, as real hosts do;
#  - a LOCAL STAND-IN FOR THE INTERNET ARCHIVE (tests/wayback.py: Save Page Now 2, CDX, id_
#    playback on 127.0.0.1) captures it; the real service is web.archive.org;
#  - `ppcli process` archives the URL, downloads only the archived copy, runs the Prefect batch
#    flow in-process (SQLite store, Prefect's temporary server) and writes Parquet to ./dataset.
#
# It uses the tiny test models in tests/fixtures/speech so it runs anywhere in seconds. Fixed
# ports keep the episode URL the same on every run, so a rerun finds the episode done.
# For real use, leave DIAR_MODEL / ASR_MODEL / WAYBACK_URL unset and give your own URLs:
#   ppcli process https://example.com/episode.mp3 --out dataset
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
fixtures=tests/fixtures/speech
archive_port="${DEMO_ARCHIVE_PORT:-8765}"
host_port="${DEMO_HOST_PORT:-8766}"

$bin/python -m tests.wayback --audio-dir "$fixtures" --port "$archive_port" --origin-port "$host_port" \
  > /tmp/podcastpile-demo-archive.log 2>&1 &
stand_in=$!
trap 'kill $stand_in 2>/dev/null' EXIT
for _ in $(seq 100); do
  grep -q wayback_url /tmp/podcastpile-demo-archive.log 2>/dev/null && break
  kill -0 $stand_in 2>/dev/null || { cat /tmp/podcastpile-demo-archive.log; echo "demo: could not start the local archive stand-in (ports $archive_port/$host_port busy? set DEMO_ARCHIVE_PORT/DEMO_HOST_PORT)"; exit 1; }
  sleep 0.1
done
echo "Local stand-in for the Internet Archive: http://127.0.0.1:$archive_port (podcast host: http://127.0.0.1:$host_port)"

export DIAR_MODEL="${DIAR_MODEL:-$fixtures/tiny_diar.nemo}"
export ASR_MODEL="${ASR_MODEL:-$fixtures/tiny_asr.nemo}"
export ASR_MODEL_MULTILINGUAL="${ASR_MODEL_MULTILINGUAL:-$fixtures/tiny_asr.nemo}"
export DEVICE="${DEVICE:-cpu}"
export WAYBACK_URL="http://127.0.0.1:$archive_port"
export SPN_POLL_SECONDS=1
# Save Page Now 2 needs archive.org keys; the stand-in takes any. For real use, your own:
# https://archive.org/account/s3.php
export IA_ACCESS_KEY="${IA_ACCESS_KEY:-demo}" IA_SECRET_KEY="${IA_SECRET_KEY:-demo}"
export ALLOW_PRIVATE_ADDRESSES=true  # the demo's podcast host is 127.0.0.1

$bin/ppcli process "http://127.0.0.1:$host_port/audio/conversation.wav" --language en --out dataset
$bin/ppcli import examples/episodes.jsonl
$bin/ppcli list
$bin/ppcli stats
echo "Parquet dataset: $(pwd)/dataset/data/episodes and dataset/data/turns (see dataset/README.md)"
