"""Issue 15, files: latent models sample from the command line on any install (the VAE named by sha256
and shipped name, --vae checked before sampling), every load verifies the file's bytes, one training
run per output_dir, and no diverged weights in a checkpoint. One test per cause."""

import shutil
import threading
from pathlib import Path

import pytest
import torch
from _http_server import FolderServer
from _train_utils import one_thread, tiny_config

from diffusion_lib import checkpoint as ck
from diffusion_lib import cli, download
from diffusion_lib.checkpoint import load_classifier, load_model, load_vae
from diffusion_lib.course import pretrained
from diffusion_lib.latent import decode_latents
from diffusion_lib.pipelines.generate import generate
from diffusion_lib.training import train
from diffusion_lib.training.trainer import MAX_ABS_WEIGHT, DivergedWeightsError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints"


def flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ integrity
@pytest.mark.parametrize("where", ["weights", "digest record"])
def test_a_flipped_bit_in_a_training_checkpoint_is_refused_naming_the_file(tmp_path, where):
    path = ck.save_checkpoint(tmp_path / "ckpt_00000001.pt", {"model": {"w": torch.arange(4096.0)}})
    assert torch.equal(ck.load_checkpoint(path)["model"]["w"], torch.arange(4096.0))
    size = path.stat().st_size
    flip(path, size // 2 if where == "weights" else size - 70, bit=3)
    with pytest.raises(ck.CheckpointError, match=r"'.*ckpt_00000001\.pt' is damaged"):
        ck.load_checkpoint(path)


def test_every_single_bit_flip_of_a_checkpoint_is_refused(tmp_path):
    # Not only the tensors: zip headers, padding, the pickle and the digest itself.
    path = ck.save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(3)}})
    original = path.read_bytes()
    for offset in range(0, len(original), 7):
        flip(path, offset, bit=offset % 8)
        with pytest.raises(ck.CheckpointError, match="c.pt"):
            ck.load_checkpoint(path)
        path.write_bytes(original)


def test_a_flipped_byte_in_a_shipped_model_is_refused_by_its_card_and_by_its_crc(tmp_path):
    for suffix in (".pt", ".json"):
        shutil.copy(SHIPPED / f"fashion_classifier{suffix}", tmp_path / f"fashion_classifier{suffix}")
    copy = tmp_path / "fashion_classifier.pt"
    load_classifier(copy)
    flip(copy, copy.stat().st_size // 2)
    with pytest.raises(ck.CheckpointError, match=r"fashion_classifier\.pt' has sha256 .* its model card"):
        load_classifier(copy)
    (tmp_path / "fashion_classifier.json").unlink()  # a file written before this check, without a card
    with pytest.raises(ck.CheckpointError, match=r"fashion_classifier\.pt' is damaged: its part .* CRC-32"):
        load_classifier(copy)


# ------------------------------------------------------------------------- latent models, any install
@pytest.fixture
def no_runs(tmp_path, monkeypatch):
    """A fresh clone: no runs/ folder (the working folder is empty), the repository's checkpoints/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(pretrained.CHECKPOINTS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_shipped_latent_models_name_the_shipped_vae():
    vae_sha256 = pretrained.manifest()["fashion_vae"]["sha256"]
    for name in ("fashion_latent_ddpm", "fashion_cfg"):
        _, _, info = load_model(SHIPPED / f"{name}.pt")
        assert info["vae_sha256"] == vae_sha256 and info["vae_name"] == "fashion_vae", name
        assert pretrained.read_card(SHIPPED / f"{name}.pt")["vae"] == {"name": "fashion_vae", "sha256": vae_sha256}
        assert pretrained.resolve_vae(info) == SHIPPED / "fashion_vae.pt"


def test_sample_a_shipped_guided_model_by_name_without_runs(no_runs, capsys):
    out = no_runs / "dress.png"
    code = cli.main(["sample", "--checkpoint", "fashion_cfg", "--class", "3", "--guidance-scale", "3", "--n", "2",
                     "--steps", "2", "--out", str(out), "--threads", "1"])
    assert code == 0 and out.is_file() and f"to {out}" in capsys.readouterr().out
    assert not (no_runs / "runs").exists()


def test_the_grid_shows_the_class_asked_for():
    # What the command does, measured: the shipped classifier (test accuracy 0.91) reads class 3 (dress).
    model, schedule, info = pretrained.load_pretrained("fashion_cfg")
    vae = load_vae(pretrained.resolve_vae(info))
    with one_thread():
        latents = generate(model, schedule, info, sampler="ddim", steps=20, n=6, batch_size=6, seed=0,
                           guidance_scale=3.0, eta=0.0, device="cpu", progress=False, labels=torch.full((6,), 3))
        images = decode_latents(latents, vae)
        with torch.no_grad():
            predicted = load_classifier(SHIPPED / "fashion_classifier.pt")(images.clone()).argmax(1)
    assert (predicted == 3).sum() >= 5, predicted


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_a_vae_with_another_sha256_is_refused_before_sampling(no_runs, capsys, monkeypatch, command):
    import diffusion_lib.pipelines.generate as generate_module

    monkeypatch.setattr(generate_module, "sample_in_batches", lambda *a, **k: pytest.fail("sampled"))
    other = no_runs / "other_vae.pt"
    shutil.copy(SHIPPED / "fashion_vae.pt", other)
    flip(other, other.stat().st_size // 2)  # another file (here: damaged) under another name
    code = cli.main([command, "--checkpoint", "fashion_latent_ddpm", "--vae", str(other), "--out", "x.png"])
    err = capsys.readouterr().err
    assert code == 2 and "other_vae.pt' has sha256" in err and "trained with the VAE file of sha256 15b54ae004afab63" in err
    assert "the shipped fashion_vae" in err and not Path("x.png").exists()


def test_model_and_vae_are_fetched_when_they_are_not_on_the_machine(tmp_path, monkeypatch):
    # A regular install (Colab): no checkpoints/ folder; the command fetches both into the cache.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(pretrained, "checkpoint_dirs", lambda: [tmp_path / "env", pretrained.cache_dir()])
    with FolderServer(SHIPPED) as server:
        monkeypatch.setenv(pretrained.CHECKPOINTS_URL_ENV, server.url)
        assert cli.main(["sample", "--checkpoint", "fashion_cfg", "--class", "3", "--n", "1", "--steps", "1",
                         "--out", "grid.png", "--threads", "1"]) == 0
    assert Path("grid.png").is_file()
    _, _, info = load_model(pretrained.cache_dir() / "fashion_cfg.pt")
    path = pretrained.resolve_vae(info, progress=False)
    assert path == pretrained.cache_dir() / "fashion_vae.pt"
    assert download.sha256_of(path) == info["vae_sha256"]
    path.unlink()
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    with pytest.raises(FileNotFoundError, match=r"shipped model fashion_vae \(the VAE of .*fashion_cfg\.pt\) is "
                                                r"not on this machine .* put fashion_vae\.pt in one of"):
        pretrained.resolve_vae(info, progress=False)


def test_a_latent_model_whose_vae_is_missing_or_another_is_refused(tmp_path):
    info = {"path": "latent.pt", "vae": str(tmp_path / "gone" / "vae.pt"), "vae_sha256": "ab" * 32}
    with pytest.raises(FileNotFoundError, match=r"latent\.pt is a latent-diffusion model.*gone/vae\.pt.*--vae FILE"):
        pretrained.resolve_vae(info)
    info["vae"] = str(SHIPPED / "fashion_vae.pt")  # a file at the recorded path, but another one
    with pytest.raises(ValueError, match=r"fashion_vae\.pt' has sha256 15b54ae004afab63\.\.\., but latent\.pt was "
                                         r"trained with the VAE file of sha256 abababababababab"):
        pretrained.resolve_vae(info)
    with pytest.raises(ValueError, match="pixel-space model, which takes no VAE"):
        pretrained.resolve_vae({"path": "pixel.pt", "vae": None}, "fashion_vae")
    with pytest.raises(FileNotFoundError, match=r"checkpoint 'fashion_cfgg' is neither a file nor a shipped model"):
        pretrained.resolve_checkpoint("fashion_cfgg")


# ------------------------------------------------------------------------------- one run per folder
def hold_lock_in_another_thread(folder: Path):
    """Take the run lock of ``folder`` in a second thread (as another process would) until released."""
    taken, release = threading.Event(), threading.Event()

    def hold():
        with ck.run_lock(folder):
            taken.set()
            release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    assert taken.wait(30)
    return release, worker


def test_a_second_run_on_the_same_output_dir_fails_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    release, worker = hold_lock_in_another_thread(out)
    try:
        with pytest.raises(ck.RunLockedError, match=r"output_dir '.*run' is in use by another training run \(pid \d+"):
            train(tiny_config(out, max_steps=2))
        code = cli.main(["train", "--set", f"output_dir={out}", "dataset=shapes", "max_steps=2"])
        assert code == 2 and "is in use by another training run" in capsys.readouterr().err
        assert not (out / "log.csv").exists() and not ck.checkpoint_dir(out).exists()  # nothing touched
    finally:
        release.set()
        worker.join()
    with one_thread():
        assert train(tiny_config(out, max_steps=2))["step"] == 2  # free again


def test_the_run_lock_is_reentrant_in_its_thread_and_waits_when_asked(tmp_path):
    out = tmp_path / "run"
    with ck.run_lock(out, wait=True):
        with ck.run_lock(out):  # train() inside a notebook's wait-lock: the same holder
            pass
    release, worker = hold_lock_in_another_thread(out)
    threading.Timer(0.5, release.set).start()
    with ck.run_lock(out, wait=True):  # waits for the other holder instead of failing
        assert release.is_set()
    worker.join()


# ----------------------------------------------------------------------------- no diverged checkpoint
def test_diverged_but_finite_weights_are_never_saved(tmp_path):
    # AdamW moves weights by up to lr at the first step: finite weights far beyond any trained net's.
    out = tmp_path / "run"
    with one_thread(), pytest.raises(DivergedWeightsError, match=r"model weights diverged at step 1: max \|w\| of "
                                                                  r"'.*' is \d\.\d+e\+\d\d.*last good checkpoint: none yet"):
        train(tiny_config(out, lr=1e30, grad_clip="null", warmup_steps=0, max_steps=5, checkpoint_every=1))
    assert ck.list_checkpoints(out) == []


def test_the_last_good_checkpoint_is_good(tmp_path, monkeypatch):
    from diffusion_lib.training import Trainer

    out = tmp_path / "run"
    real_step = Trainer.training_step

    def exploding(self, x, y):  # step 3 leaves finite weights of 1e30
        result = real_step(self, x, y)
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).mul_(1e30)
        return result

    with one_thread():
        train(tiny_config(out, max_steps=2, checkpoint_every=2))
        monkeypatch.setattr(Trainer, "training_step", exploding)
        with pytest.raises(DivergedWeightsError, match=r"step 3: .*last good checkpoint: .*ckpt_00000002\.pt"):
            train(tiny_config(out, max_steps=4, checkpoint_every=1), resume=True)
    [good] = ck.list_checkpoints(out)
    state = ck.load_checkpoint(good)
    assert all(v.abs().max() <= MAX_ABS_WEIGHT for v in state["model"].values() if v.is_floating_point())
