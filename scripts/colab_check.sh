#!/usr/bin/env bash
# Colab compatibility check (`make colab-check`, not part of CI).
# 1. A Python 3.13 virtual environment with the versions of Colab's GPU runtime (torch 2.11.0,
#    torchvision 0.26.0, ipywidgets 7.7.1, matplotlib 3.10, numpy 2.1) and none of what Colab lacks.
# 2. The notebooks' own set-up cell (notebooks/_first_cell.py) run as on Colab: "google.colab" is
#    taken as present and the repository URL points at this checkout's committed `main` branch.
#    Colab's torch must come out unchanged.
# 3. The smoke notebooks (`pytest --nbval`) and the unit tests with that interpreter.
# The venv is kept in .venv-colab (delete it to start afresh). Needs PyPI for the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)
PY313=${PY313:-$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python}
VENV=${VENV:-$repo/.venv-colab}
py="$VENV/bin/python"

echo "== 1. Colab-like environment in $VENV"
[ -x "$py" ] || "$PY313" -m venv "$VENV"
"$py" -m pip install -q --disable-pip-version-check \
  torch==2.11.0 torchvision==0.26.0 ipywidgets==7.7.1 "matplotlib>=3.10,<3.11" "numpy>=2.1,<2.2" \
  scipy pillow tqdm pyyaml ipykernel pytest nbval nbformat
# Start from Colab's state: no course library, no torchmetrics/torch-fidelity.
"$py" -m pip uninstall -q -y diffusion_lib torchmetrics torch-fidelity >/dev/null 2>&1 || true
before=$("$py" -c 'import torch, torchvision; from importlib.metadata import version as v; print(v("torch"), v("torchvision"), torch.__version__)')
echo "python $("$py" -c 'import platform; print(platform.python_version())'), torch/torchvision $before"

echo "== 2. the notebooks' set-up cell, as on Colab"
cell=$(cat notebooks/_first_cell.py)
url="https://github.com/diffusion-course/diffusion-course"
colab_cell=${cell//\"google.colab\" in sys.modules/True}
colab_cell=${colab_cell//$url/file://$repo}
if [ "$colab_cell" = "$cell" ] || [[ "$colab_cell" == *"$url"* ]] || [[ "$colab_cell" == *google.colab* ]]; then
  echo "colab_check.sh: notebooks/_first_cell.py changed shape; update the substitutions here" >&2
  exit 1
fi
start=$SECONDS
(cd /tmp && "$py" -c "$colab_cell")
after=$("$py" -c 'import torch, torchvision; from importlib.metadata import version as v; print(v("torch"), v("torchvision"), torch.__version__)')
echo "set-up cell took $((SECONDS - start)) s; torch/torchvision after it: $after"
[ "$after" = "$before" ] || { echo "the set-up cell changed Colab's torch: $before -> $after" >&2; exit 1; }
(cd /tmp && "$py" -c 'import diffusion_lib, torchmetrics, torch_fidelity; print("installed:", diffusion_lib.__file__)')

echo "== 3. smoke notebooks and unit tests with Python 3.13 / Colab's versions"
DIFFUSION_PROFILE=smoke "$py" -m pytest -q -p no:cacheprovider --nbval --nbval-current-env notebooks/
"$py" -m pytest -q -p no:cacheprovider tests/
