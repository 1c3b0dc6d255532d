#!/usr/bin/env bash
# Download the wheels bench/gpu_pipeline.py needs on a lent GPU machine into ./.whl (about 48 MB).
#
# That machine reaches no package index, and its image (Python 3.12, CUDA torch, lightning,
# transformers, numba, sentencepiece, pandas, httpx, ...) lacks NeMo and the packages below.
# The list is what the benchmark imports, found by running it with only the image's packages
# plus these on the path; versions are the ones this project's venv runs. lightning is pinned
# to 2.4.0 because nemo_toolkit 3.0.0 asks for <=2.4.0 (the image has a newer one).
# antlr4-python3-runtime 4.9.3 (omegaconf's pin) exists only as an sdist: built into a wheel here.
#
# Run from the repository root:  bash bench/gpu_wheels.sh   (then see bench/README.md)
set -euo pipefail

DEST=.whl
PYTHON=${PYTHON:-.venv/bin/python}
PACKAGES=(
  nemo-toolkit==3.0.0 lightning==2.4.0 hydra-core==1.3.2 omegaconf==2.3.0
  lhotse==1.33.0 librosa==0.11.0 av==18.1.0 soundfile==0.14.0 cffi==2.1.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  nv-one-logger-core==2.3.1 nv-one-logger-training-telemetry==2.3.1
  nv-one-logger-pytorch-lightning-integration==2.3.1 strenum==0.4.15 overrides==7.7.0 toml==0.10.2
  intervaltree==3.2.1 cytoolz==1.2.0 kaldialign==0.12.0 braceexpand==0.1.7 webdataset==1.0.2
  datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8
)

mkdir -p "$DEST"
# Keep the wheels out of git (local exclude, not .gitignore: they are a per-checkout download).
grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude

"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3

du -sh "$DEST"
