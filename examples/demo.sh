#!/usr/bin/env bash
# The main job on embedded defaults, offline: a local "podcast host" serves the bundled
# two-speaker clip, `ppcli process` runs the Prefect batch flow in-process (SQLite store,
# Prefect's temporary server) and writes Parquet to ./dataset.
#
# It uses the tiny test models in tests/fixtures/speech so it runs anywhere in seconds.
# For the real models, leave DIAR_MODEL / ASR_MODEL unset (they download from Hugging Face
# on first use) and give your own episode URLs:
#   ppcli process --live https://example.com/episode.mp3 --out dataset
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
fixtures=tests/fixtures/speech
port=$($bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$bin/python -m http.server "$port" --bind 127.0.0.1 --directory "$fixtures" >/dev/null 2>&1 &
host=$!
trap 'kill $host 2>/dev/null' EXIT
for _ in $(seq 50); do
  $bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done

export DIAR_MODEL="${DIAR_MODEL:-$fixtures/tiny_diar.nemo}"
export ASR_MODEL="${ASR_MODEL:-$fixtures/tiny_asr.nemo}"
export ASR_MODEL_MULTILINGUAL="${ASR_MODEL_MULTILINGUAL:-$fixtures/tiny_asr.nemo}"
export DEVICE="${DEVICE:-cpu}"
export ALLOW_PRIVATE_ADDRESSES=true  # the demo's podcast host is 127.0.0.1

$bin/ppcli process --live "http://127.0.0.1:$port/conversation.wav" --language en --out dataset
$bin/ppcli import examples/episodes.jsonl
$bin/ppcli list
$bin/ppcli stats
echo "Parquet dataset: $(pwd)/dataset (see dataset/README.md and dataset/manifest.json)"
