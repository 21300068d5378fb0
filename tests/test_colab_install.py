"""A Colab-like install, offline: the package built and installed as a regular (non-editable) package
into a fresh folder, run from another folder, so it cannot see the checkout's checkpoints/; the
shipped models come from a local HTTP server ($DIFFUSION_CHECKPOINTS_URL) into an empty cache.
The scenarios run in tests/_installed_client.py; `make colab-check` runs chapter 05 the same way."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _http_server import FolderServer, silent_server

REPO = Path(__file__).resolve().parents[1]
NAME = "fashion_ddpm_linear"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install --no-deps --target SITE`` of a copy of the package's sources (the build writes into
    its source folder, which must not be the checkout); returns SITE."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO / "diffusion_lib", src / "diffusion_lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    site = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (site / "diffusion_lib" / "course" / "shipped_models.json").is_file()  # package data made it into the install
    assert not (site / "checkpoints").exists()
    return site


def run_client(site: Path, tmp_path: Path, url: str, *args) -> tuple[dict, str]:
    """The scenario in a fresh process: installed package only, empty HOME (cache), another working folder."""
    work = tmp_path / "content"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSION_")}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "home"), DIFFUSION_CHECKPOINTS_URL=url,
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "_installed_client.py"), *map(str, args)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site)  # not the checkout, not an editable install
    return result, done.stderr


def test_the_shipped_model_is_fetched_verified_and_cached(installed, tmp_path):
    manifest = json.loads((installed / "diffusion_lib" / "course" / "shipped_models.json").read_text())
    with FolderServer(REPO / "checkpoints") as server:
        result, _ = run_client(installed, tmp_path, server.url, "shipped")
    cache = tmp_path / "home" / ".cache" / "diffusion_lib" / "checkpoints"
    first, second = result["first"], result["second"]
    assert first["source"] == second["source"] == "shipped" and first["steps"] == 2600
    assert first["path"] == second["path"] == str(cache / f"{NAME}.pt")
    assert first["sha256"] == second["sha256"] == result["manifest_sha256"] == manifest[NAME]["sha256"]
    assert server.requests == [f"/{NAME}.pt", f"/{NAME}.json"]  # the second call used the cache
    assert sorted(p.name for p in cache.iterdir()) == [f"{NAME}.json", f"{NAME}.pt"]


def test_a_corrupted_download_is_refused_and_not_cached(installed, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(REPO / "checkpoints", served)
    data = bytearray((served / f"{NAME}.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (served / f"{NAME}.pt").write_bytes(bytes(data))
    with FolderServer(served) as server:
        result, _ = run_client(installed, tmp_path, server.url, "corrupt")
    expected = json.loads((installed / "diffusion_lib" / "course" / "shipped_models.json").read_text())[NAME]["sha256"]
    assert f"{NAME}.pt has sha256 {hashlib.sha256(bytes(data)).hexdigest()}, expected {expected}" in result["error"]
    cache = Path(result["cache"])
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_silent_server_times_out_then_the_model_is_trained_here(installed, tmp_path):
    with silent_server() as url:
        result, stderr = run_client(installed, tmp_path, url, "silent", 2)
    assert result["default_timeout_s"] <= 30  # what a reader gets without the test's 2 s
    lines = [line for line in stderr.splitlines() if "could not be fetched" in line]
    assert len(lines) == 1 and f"The shipped model {NAME} could not be fetched" in lines[0]
    assert "no answer within 2 s" in lines[0] and "trained here instead" in lines[0]
    assert result["source"] == "trained here" and result["steps"] == 2
    assert result["seconds"] < 2 + 30  # the timeout, then seconds of tiny training
