"""Shipped models for any install: the manifest, the one repository URL, the download (timeouts,
atomic, verified) and the verification of local files. tests/test_colab_install.py runs the same
path through a regular (non-editable) install."""

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from _http_server import FolderServer, silent_server

from diffusion_lib import download
from diffusion_lib.course import pretrained, repository

REPO = Path(__file__).resolve().parents[1]
SMALL = "fashion_classifier"  # the smallest shipped model (0.3 MB)


# ------------------------------------------------------------------------- manifest and URL
def test_manifest_matches_checkpoints():
    assert pretrained.manifest() == pretrained.build_manifest(REPO / "checkpoints"), (
        "diffusion_lib/course/shipped_models.json is stale: run `python scripts/ship_model.py --manifest`")
    assert set(pretrained.manifest()) == set(pretrained.NAMES)
    for name, entry in pretrained.manifest().items():
        card = json.loads((REPO / "checkpoints" / entry["card"]["file"]).read_text())
        assert entry["file"] == f"{name}.pt" and card["sha256"] == entry["sha256"] == hashlib.sha256(
            (REPO / "checkpoints" / entry["file"]).read_bytes()).hexdigest()


def test_manifest_is_package_data():
    config = (REPO / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\s*"diffusion_lib\.course" = \["shipped_models\.json"\]', config)
    assert pretrained.MANIFEST.parent == Path(pretrained.__file__).parent


def test_the_repository_url_is_kept_in_one_place():
    url, branch = repository.URL, repository.BRANCH
    assert f'"diffusion_lib @ git+{url}@{branch}"' in (REPO / "notebooks" / "_first_cell.py").read_text()
    book = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]
    assert (book["url"], book["branch"]) == (url, branch)
    owner_repo = url.removeprefix("https://github.com/")
    colab = re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([\w.-]+)/")
    install = re.compile(r"git\+https://github\.com/([\w.-]+/[\w.-]+)@([\w.-]+)")
    texts = [REPO / "README.md", *sorted((REPO / "book").glob("*.md")),
             *sorted((REPO / "notebooks").glob("*.ipynb")), *sorted(REPO.glob("exercises/*.ipynb"))]
    for pattern in (colab, install):
        found = [m.groups() for path in texts for m in pattern.finditer(path.read_text())]
        assert found and set(found) == {(owner_repo, branch)}
    assert url not in (REPO / "scripts" / "colab_check.sh").read_text()  # the script reads course/repository.py


def test_checkpoints_url(monkeypatch):
    monkeypatch.delenv(pretrained.CHECKPOINTS_URL_ENV, raising=False)
    owner_repo = repository.URL.removeprefix("https://github.com/")
    assert pretrained.checkpoints_url() == f"https://raw.githubusercontent.com/{owner_repo}/main/checkpoints/"
    monkeypatch.setenv(pretrained.CHECKPOINTS_URL_ENV, "http://mirror.example/models")
    assert pretrained.checkpoints_url() == "http://mirror.example/models/"
    # raw.githubusercontent.com serves git blobs; a checkpoint stored with Git LFS would come back as its pointer
    attributes = REPO / ".gitattributes"
    assert not attributes.exists() or "lfs" not in attributes.read_text()


# ----------------------------------------------------------------------------------- fetch
@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "good.bin").write_bytes(b"x" * 200_000)
    with FolderServer(folder) as server:
        yield server, hashlib.sha256(b"x" * 200_000).hexdigest()


def no_temporary_files(folder: Path) -> bool:
    return not folder.exists() or not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_fetch_writes_the_verified_file(served, tmp_path):
    server, sha = served
    out = download.fetch(server.url + "good.bin", tmp_path / "cache" / "good.bin", sha256=sha, size=200_000,
                         progress=False)
    assert out.read_bytes() == b"x" * 200_000 and server.requests == ["/good.bin"]
    assert download.sha256_of(out) == sha and no_temporary_files(out.parent)


def test_fetch_refuses_a_wrong_file(served, tmp_path):
    server, sha = served
    wrong = "0" * 64
    target = tmp_path / "cache" / "good.bin"
    with pytest.raises(download.ChecksumError, match=f"good.bin has sha256 {sha}, expected {wrong}.*deleted"):
        download.fetch(server.url + "good.bin", target, sha256=wrong, progress=False)
    with pytest.raises(download.ChecksumError, match="longer than the expected 1000 bytes"):
        download.fetch(server.url + "good.bin", target, sha256=sha, size=1000, progress=False)
    assert not target.exists() and no_temporary_files(target.parent)


def test_fetch_errors_name_the_url(served, tmp_path, monkeypatch):
    server, sha = served
    with pytest.raises(download.DownloadError, match=r"missing\.bin: HTTP 404"):
        download.fetch(server.url + "missing.bin", tmp_path / "m.bin", sha256=sha, progress=False)
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    with pytest.raises(download.DownloadError, match="DIFFUSION_OFFLINE is set"):
        download.fetch(server.url + "good.bin", tmp_path / "g.bin", sha256=sha, progress=False)
    assert server.requests == ["/missing.bin"]  # offline: not even tried


def test_a_server_that_never_answers_times_out(tmp_path):
    assert download.TIMEOUT_S <= 30  # the default: a silent server fails within 30 s
    with silent_server() as url:
        start = time.perf_counter()
        with pytest.raises(download.DownloadError, match="no answer within 0.5 s"):
            download.fetch(url + "good.bin", tmp_path / "g.bin", sha256="0" * 64, timeout=0.5, progress=False)
        assert time.perf_counter() - start < 5
    assert not (tmp_path / "g.bin").exists() and no_temporary_files(tmp_path)


def test_verified_digests_are_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    calls = []
    monkeypatch.setattr(download, "file_digest", lambda p: calls.append(p) or hashlib.sha256(p.read_bytes()).hexdigest())
    sha = hashlib.sha256(b"abc").hexdigest()
    assert download.verify(path, sha) == path and download.verify(path, sha) == path
    assert len(calls) == 1
    path.write_bytes(b"abd")  # another size or mtime: hashed again, and refused
    with pytest.raises(download.ChecksumError, match=f"f.bin has sha256 {hashlib.sha256(b'abd').hexdigest()}, "
                                                     f"expected {sha}"):
        download.verify(path, sha)
    assert len(calls) == 2


# --------------------------------------------------------------- shipped models, no checkout
@pytest.fixture
def no_checkout(tmp_path, monkeypatch):
    """As after a regular install: no checkpoints/ folder beside the package; empty env folder and cache."""
    monkeypatch.setenv(pretrained.CHECKPOINTS_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(pretrained, "checkpoint_dirs", lambda: [tmp_path / "env", pretrained.cache_dir()])
    with FolderServer(REPO / "checkpoints") as server:
        monkeypatch.setenv(pretrained.CHECKPOINTS_URL_ENV, server.url)
        yield server


def test_a_shipped_model_is_fetched_once(no_checkout):
    entry = pretrained.manifest()[SMALL]
    assert pretrained.find_checkpoint(SMALL) is None
    path = pretrained.shipped_checkpoint(SMALL)
    assert path == pretrained.cache_dir() / entry["file"] and download.sha256_of(path) == entry["sha256"]
    assert pretrained.read_card(path)["sha256"] == entry["sha256"]
    assert no_checkout.requests == [f"/{SMALL}.pt", f"/{SMALL}.json"]
    assert pretrained.shipped_checkpoint(SMALL) == path and len(no_checkout.requests) == 2  # from the cache


def test_a_damaged_cached_model_is_fetched_again(no_checkout):
    path = pretrained.shipped_checkpoint(SMALL)
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    path.write_bytes(bytes(data))
    assert pretrained.find_checkpoint(SMALL) is None  # skipped in the cache ...
    assert pretrained.shipped_checkpoint(SMALL) == path and len(no_checkout.requests) == 4  # ... and replaced
    assert download.sha256_of(path) == pretrained.manifest()[SMALL]["sha256"]


def test_a_local_file_with_a_flipped_byte_is_refused(no_checkout, tmp_path):
    env = tmp_path / "env"
    env.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(REPO / "checkpoints" / f"{SMALL}{suffix}", env)
    data = bytearray((env / f"{SMALL}.pt").read_bytes())
    data[1000] ^= 1
    (env / f"{SMALL}.pt").write_bytes(bytes(data))
    actual, shipped = hashlib.sha256(bytes(data)).hexdigest(), pretrained.manifest()[SMALL]["sha256"]
    with pytest.raises(download.ChecksumError, match=f"{SMALL}.pt has sha256 {actual}, but the shipped model "
                                                     f"{SMALL} has {shipped}"):
        pretrained.shipped_checkpoint(SMALL)
    assert no_checkout.requests == []
    # a model shipped since the manifest (its card records its sha256) is taken
    card = json.loads((env / f"{SMALL}.json").read_text())
    (env / f"{SMALL}.json").write_text(json.dumps({**card, "sha256": actual}))
    assert pretrained.find_checkpoint(SMALL) == env / f"{SMALL}.pt"


def test_offline_one_line_then_none(no_checkout, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.CHECKPOINTS_URL_ENV, no_checkout.url + "nowhere/")
    assert pretrained.shipped_checkpoint(SMALL) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"The shipped model {SMALL} could not be fetched" in err and "HTTP 404" in err
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        pretrained.load_pretrained("fashion_ddpm_linear")
    with pytest.raises(ValueError, match="shipped model"):
        pretrained.fetch_checkpoint("not_shipped")
