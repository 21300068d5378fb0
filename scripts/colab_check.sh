#!/usr/bin/env bash
# Colab compatibility check (`make colab-check`, not part of CI).
# 1. A Python 3.13 virtual environment with the versions of Colab's GPU runtime (torch 2.11.0,
#    torchvision 0.26.0, ipywidgets 7.7.1, matplotlib 3.10, numpy 2.1) and none of what Colab lacks.
# 2. The notebooks' own set-up cell (notebooks/_first_cell.py) run as on Colab: "google.colab" is
#    taken as present and the repository URL points at this checkout's committed `main` branch.
#    Colab's torch must come out unchanged.
# 3. The smoke notebooks (`pytest --nbval`) and the unit tests with that interpreter.
# 4. Chapter 05 in the cpu profile as a reader without a checkout runs it: from an empty folder, with
#    an empty cache, and the shipped models of the committed `main` served on 127.0.0.1 in place of
#    GitHub ($DIFFUSION_CHECKPOINTS_URL). The chapter must show the shipped model, fetched once.
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
  scipy pillow tqdm pyyaml ipykernel pytest nbval nbformat nbconvert setuptools
# Start from Colab's state: no course library, no torchmetrics/torch-fidelity.
"$py" -m pip uninstall -q -y diffusion_lib torchmetrics torch-fidelity >/dev/null 2>&1 || true
before=$("$py" -c 'import torch, torchvision; from importlib.metadata import version as v; print(v("torch"), v("torchvision"), torch.__version__)')
echo "python $("$py" -c 'import platform; print(platform.python_version())'), torch/torchvision $before"

echo "== 2. the notebooks' set-up cell, as on Colab"
cell=$(cat notebooks/_first_cell.py)
url=$("$py" -c 'import runpy; print(runpy.run_path("diffusion_lib/course/repository.py")["URL"])')
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

echo "== 4. chapter 05, cpu profile, no checkout: the shipped model from a local server"
work=$(mktemp -d)
server_pid=
trap '[ -z "$server_pid" ] || kill "$server_pid"; rm -rf "$work"' EXIT
mkdir -p "$work/served" "$work/content" "$work/home"
git archive main checkpoints | tar -x -C "$work/served"  # what the installed manifest describes
git show main:notebooks/05_ddim.ipynb > "$work/content/05_ddim.ipynb"
"$py" -u -m http.server 0 --bind 127.0.0.1 --directory "$work/served/checkpoints" > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do grep -q "port [0-9]" "$work/server.log" && break; sleep 0.1; done
port=$(sed -n 's/.* port \([0-9][0-9]*\).*/\1/p' "$work/server.log" | head -n 1)
[ -n "$port" ] || { echo "the local server did not start: $(cat "$work/server.log")" >&2; exit 1; }
start=$SECONDS
# A fresh HOME: an empty ~/.cache/diffusion_lib/checkpoints; the data stay where they were.
(cd "$work/content" && HOME="$work/home" DIFFUSION_DATA="${DIFFUSION_DATA:-$HOME/.cache/diffusion_lib/data}" \
  DIFFUSION_PROFILE=cpu DIFFUSION_CHECKPOINTS_URL="http://127.0.0.1:$port/" \
  "$py" -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1200 \
  --output executed.ipynb 05_ddim.ipynb)
echo "chapter 05 took $((SECONDS - start)) s"
(cd /tmp && "$py" - "$work" <<'EOF'
import hashlib, sys
from pathlib import Path
import nbformat
from diffusion_lib.course import pretrained

work = Path(sys.argv[1])
nb = nbformat.read(work / "content" / "executed.ipynb", as_version=4)
text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
assert "Everything below uses the shipped model fashion_ddpm_linear" in text, "chapter 05 did not use the shipped model"
assert "could not be fetched" not in text
entry = pretrained.manifest()["fashion_ddpm_linear"]
cached = work / "home" / ".cache" / "diffusion_lib" / "checkpoints" / entry["file"]
assert hashlib.sha256(cached.read_bytes()).hexdigest() == entry["sha256"], "the cached model is not the manifest's"
print("chapter 05 showed the shipped model, fetched into", cached.parent.relative_to(work))
EOF
)
fetched=$(grep -c '"GET /fashion_ddpm_linear.pt' "$work/server.log" || true)
[ "$fetched" = 1 ] || { echo "fashion_ddpm_linear.pt was requested $fetched times (expected once)" >&2; exit 1; }
