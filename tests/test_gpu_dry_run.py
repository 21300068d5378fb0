"""Every chapter runs its gpu-profile branches on the CPU: a dry run (DIFFUSION_DRY_RUN, see profiles.py).

The committed outputs are the cpu profile's and nbval checks them in the smoke profile, so neither
ever executes a `gpu=` size or an `if profile == "gpu"` branch. Here each notebook runs top to bottom
with DIFFUSION_PROFILE=gpu and DIFFUSION_DRY_RUN=4 (every count cut to 4, T to 20), offline, on
CIFAR-10 (and, for chapter 7, ImageNet-100) copies in their real formats; any error fails the test
with the cell that raised it. Outputs are not compared: a dry run's numbers mean nothing.

    DIFFUSION_PROFILE=gpu DIFFUSION_DRY_RUN=4 DIFFUSION_DATA=<folder> jupyter nbconvert --execute ...

is the same by hand; `pytest tests/test_gpu_dry_run.py` writes the data itself. It runs on the CPU;
on a machine with a GPU, `DIFFUSION_DEVICE=cuda pytest tests/test_gpu_dry_run.py` also runs the
chapters' CUDA branches (timing, peak memory).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from _dataset_fixtures import write_cifar10, write_imagenet100
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DRY_RUN = "4"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def data_homes(tmp_path_factory):
    """{"cifar10": a data folder with CIFAR-10, "imagenet100": one with CIFAR-10 and ImageNet-100}."""
    cifar = tmp_path_factory.mktemp("data_cifar10")
    write_cifar10(cifar)
    both = tmp_path_factory.mktemp("data_imagenet100")
    write_cifar10(both)
    write_imagenet100(both)
    return {"cifar10": cifar, "imagenet100": both}


def execute(notebook: Path, tmp_path: Path, monkeypatch, data_home: Path):
    """Run `notebook` in the gpu dry run from a folder beside a link to benchmarks/ (as in a clone:
    the chapters read ../benchmarks/results), writing runs/ and caches under tmp_path."""
    work = tmp_path / "notebooks"
    work.mkdir()
    (tmp_path / "benchmarks").symlink_to(REPO / "benchmarks")
    env = {"DIFFUSION_PROFILE": "gpu", "DIFFUSION_DRY_RUN": DRY_RUN, "DIFFUSION_DATA": str(data_home),
           "DIFFUSION_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "DIFFUSION_CACHE": str(tmp_path / "cache"),
           "DIFFUSION_DEVICE": os.environ.get("DIFFUSION_DEVICE") or "cpu",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONHASHSEED": "0",
           # one thread: on a busy 2-core machine two threads made the training steps up to ten times slower
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(  # the kernel really ran the dry run of the gpu profile
        "from diffusion_lib import profiles\nprint(profiles.get_profile(), profiles.dry_run_cap(profiles.get_profile()))"))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def cell_seconds(nb):
    """(seconds, index) of every executed code cell, from nbclient's timestamps."""
    from datetime import datetime

    for i, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            start, end = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            yield (end - start).total_seconds(), i


def cases():
    for path in NOTEBOOKS:
        yield pytest.param(path, "cifar10", id=path.stem)
    # chapter 7's ImageNet-100 branch: Stable Diffusion's VAE, or offline (here) the course's VAE at 128x128.
    # Chapter 8 runs the same library function (course.recipes.load_or_train_vae_for); its sweep over
    # ImageNet-100's 100 classes would take minutes on a CPU.
    yield pytest.param(REPO / "notebooks" / "07_latent_diffusion.ipynb", "imagenet100", id="07_latent_diffusion-imagenet100")


@pytest.mark.parametrize("notebook, data", cases())
def test_chapter_runs_in_gpu_dry_run(notebook, data, data_homes, tmp_path, monkeypatch):
    try:
        nb, seconds = execute(notebook, tmp_path, monkeypatch, data_homes[data])
    except CellExecutionError as e:  # its message holds the cell's source and the traceback
        pytest.fail(f"{notebook.name} fails in the gpu profile (dry run, {data}):\n{e}", pytrace=False)
    print(f"{notebook.name} ({data}): {seconds:.1f} s; slowest cells: "
          + ", ".join(f"{i} ({t:.1f} s)" for t, i in sorted(cell_seconds(nb), reverse=True)[:3]))
    assert nb.cells[-1].outputs[0]["text"] == f"gpu {DRY_RUN}\n"


def test_missing_data_gives_the_loaders_message(data_homes, tmp_path, monkeypatch):
    """Chapter 4 in the gpu profile without CIFAR-10 and without a network: the library's
    DatasetNotFoundError naming the data set, the folder to put it in and its layout."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    with pytest.raises(CellExecutionError) as info:
        execute(REPO / "notebooks" / "04_training_ddpm.ipynb", tmp_path, monkeypatch, empty)
    message = str(info.value)
    assert "DatasetNotFoundError" in message and "dataset 'cifar10'" in message
    assert str(empty / "cifar-10-batches-py" / "data_batch_1") in message
    assert "Traceback" not in message and "OSError" not in message  # the one message, no traceback
