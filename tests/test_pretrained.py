"""diffusion_lib.course.pretrained: where shipped checkpoints are found, how they load (fp16 EMA weights,
model card), and the notebooks' "load it or train it here"."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from _train_utils import one_thread, tiny_config

from diffusion_lib import NoiseSchedule, download
from diffusion_lib.course import pretrained
from diffusion_lib.checkpoint import load_checkpoint, save_checkpoint
from diffusion_lib.training import train

REPO = Path(__file__).resolve().parents[1]
NAME = "test_only_tiny_ddpm"  # never a real checkpoint name


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 3-step run of a ~20k-parameter UNet (training code, shapes 8x8)."""
    out = tmp_path_factory.mktemp("run")
    with one_thread():
        summary = train(tiny_config(out, max_steps=3))
    return out, Path(summary["checkpoint"])


def ship(checkpoint: Path, folder: Path, name: str = NAME, fp16: bool = True, card: dict | None = None) -> Path:
    """Write a checkpoint as the course ships it: EMA weights only (fp16), configs, schedule; a card."""
    state = load_checkpoint(checkpoint)
    ema = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in state["ema"].items()}
    shipped = {k: state[k] for k in ("step", "model_config", "schedule", "prediction_type", "config")}
    path = save_checkpoint(folder / f"{name}.pt", {**shipped, "ema": ema})
    if card is not None:
        (folder / f"{name}.json").write_text(json.dumps(card))
    return path


@pytest.fixture
def no_search_dirs(tmp_path, monkeypatch):
    """Point $DIFFUSION_CHECKPOINTS and the home folder at empty temporary folders."""
    monkeypatch.setenv(pretrained.CHECKPOINTS_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_search_order(trained_run, no_search_dirs):
    tmp = no_search_dirs
    dirs = pretrained.checkpoint_dirs()
    assert dirs == [tmp / "env", REPO / "checkpoints", tmp / "home" / ".cache" / "diffusion_lib" / "checkpoints"]
    assert pretrained.find_checkpoint(NAME) is None
    cached = ship(trained_run[1], dirs[2])
    assert pretrained.find_checkpoint(NAME) == cached
    from_env = ship(trained_run[1], dirs[0])
    assert pretrained.find_checkpoint(NAME) == from_env  # the environment variable wins


def test_load_pretrained_fp16_ema_and_card(trained_run, no_search_dirs):
    card = {"steps": 3, "command": "python -m diffusion_lib train --config tiny.yaml"}
    ship(trained_run[1], no_search_dirs / "env", card=card)
    model, schedule, info = pretrained.load_pretrained(NAME)
    assert info["card"] == card and info["source"] == "shipped" and info["name"] == NAME
    assert info["weights"] == "ema" and info["step"] == 3
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    # the weights are the fp16-rounded EMA weights, cast to float32
    ema = load_checkpoint(trained_run[1])["ema"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key].half().float() if ema[key].is_floating_point() else ema[key])
    x = torch.randn(2, *info["image_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(x, torch.tensor([0, schedule.num_timesteps - 1])).dtype == torch.float32
    assert "steps" in pretrained.describe(info) and NAME in pretrained.describe(info)


def test_missing_checkpoint_and_bad_names(no_search_dirs):
    with pytest.raises(FileNotFoundError, match=f"{NAME}.pt.*{pretrained.CHECKPOINTS_ENV}"):
        pretrained.load_pretrained(NAME)
    for bad in ("", "a/b", "model.pt", None):
        with pytest.raises(ValueError, match="name"):
            pretrained.find_checkpoint(bad)


def test_no_card_is_none(trained_run, no_search_dirs):
    ship(trained_run[1], no_search_dirs / "env", fp16=False)
    assert pretrained.load_pretrained(NAME)[2]["card"] is None


def test_load_or_train_prefers_shipped_except_in_smoke(trained_run, no_search_dirs, tmp_path):
    ship(trained_run[1], no_search_dirs / "env")
    config = tiny_config(tmp_path / "ignored", max_steps=2)
    _, _, info = pretrained.load_or_train(NAME, config, profile="cpu")
    assert info["source"] == "shipped"
    with one_thread():
        _, _, info = pretrained.load_or_train(NAME, config, profile="smoke", progress=False)
    assert info["source"] == "trained here" and info["step"] == 2 and Path(info["log"]).is_file()
    assert Path(info["output_dir"]).name.startswith(f"{NAME}-smoke-")  # a fresh temporary folder
    shutil.rmtree(info["output_dir"])


def test_train_here_reuses_a_finished_run(tmp_path):
    config = tiny_config(tmp_path / "ignored", max_steps=2)
    with one_thread():
        model, _, info = pretrained.train_here(NAME, config, profile="cpu", output_dir=tmp_path / "run",
                                               progress=False)
        again, _, info2 = pretrained.train_here(NAME, config, profile="cpu", output_dir=tmp_path / "run",
                                                progress=False)
    assert info["train"]["start_step"] == 0 and info2["train"]["start_step"] == 2 == info2["step"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert "trained in this notebook (2 steps)" in pretrained.describe(info2)


def test_run_dir_names_the_configuration():
    config = tiny_config("a")
    path = pretrained.run_dir(NAME, config, "cpu")
    assert path.parent == Path("runs") and path.name.startswith(f"{NAME}-cpu-")
    assert pretrained.run_dir(NAME, tiny_config("b"), "cpu") == path  # output_dir is not part of it
    assert pretrained.run_dir(NAME, tiny_config("a", lr="2e-3"), "cpu") != path


def test_notebook_configs_are_valid():
    for name, profiles in pretrained._NOTEBOOK_CONFIGS.items():
        for profile in profiles:
            config = pretrained.notebook_config(name, profile)
            schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps,
                                               beta_start=config.beta_start, beta_end=config.beta_end)
            assert schedule.alpha_bar[-1] < 1e-3  # x_T is (almost) pure noise
    assert pretrained.notebook_config("fashion_ddpm_linear", "cpu", max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="cifar10_ddpm.*gpu"):
        pretrained.notebook_config("cifar10_ddpm", "cpu")
    with pytest.raises(ValueError, match="profile"):
        pretrained.notebook_config("fashion_ddpm_linear", "laptop")


def test_a_second_trainer_waits_for_the_run_lock(tmp_path):
    """While one process holds the run folder's lock, train_here waits; then it reuses the run."""
    import threading
    import time

    config = tiny_config(tmp_path / "ignored", max_steps=2)
    out = tmp_path / "run"
    with one_thread():
        pretrained.train_here(NAME, config, profile="cpu", output_dir=out, progress=False)
        done = []
        with pretrained.run_lock(out):
            worker = threading.Thread(target=lambda: done.append(
                pretrained.train_here(NAME, config, profile="cpu", output_dir=out, progress=False)))
            worker.start()
            time.sleep(1.0)
            assert not done  # blocked by the lock
        worker.join(timeout=60)
    assert done and done[0][2]["train"]["start_step"] == 2  # reused the finished run


def test_saved_samples_are_read_back_only_for_their_checkpoint(tmp_path):
    """scripts/measure_model.py: samples drawn on one machine (--save-samples) are scored on another
    (--samples) only against the checkpoint that drew them."""
    import importlib.util

    from diffusion_lib.checkpoint import file_digest

    script = Path(__file__).parents[1] / "scripts" / "measure_model.py"
    spec = importlib.util.spec_from_file_location("measure_model", script)
    measure_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_model)
    drew, other = tmp_path / "drew.pt", tmp_path / "other.pt"
    drew.write_bytes(b"one model")
    other.write_bytes(b"another model")
    samples = tmp_path / "samples.pt"
    images = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    torch.save({"images": images, "checkpoint_sha256": file_digest(drew), "seed": 0, "sampling_seconds": 1.0,
                "machine": {"device_name": "a GPU"}}, samples)
    assert torch.equal(measure_model.read_samples(samples, drew)["images"], images)
    with pytest.raises(SystemExit, match="another checkpoint"):
        measure_model.read_samples(samples, other)


def test_measure_model_samples_a_flow_checkpoint_with_flow_euler(tmp_path, monkeypatch, capsys):
    """scripts/measure_model.py on a flow-matching model: Euler, 50 steps, no clipping; class coverage and the
    fp16 check (against itself: no difference) written into its card beside it."""
    from _scripts import load_script

    from diffusion_lib.checkpoint import save_checkpoint
    from diffusion_lib.models import UNet, UNetConfig
    from diffusion_lib.schedules import FlowPath

    measure_model = load_script(Path(__file__).parents[1] / "scripts" / "measure_model.py", "measure_model_flow")
    torch.manual_seed(0)
    config = UNetConfig(in_channels=1, out_channels=1, image_size=32, base_channels=8, channel_mult=(1, 2),
                        num_res_blocks=1, attention_levels=(), num_groups=4)
    net = UNet(config, num_timesteps=20)
    with torch.no_grad():  # the output layer starts at zero; a moving velocity field
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "ckpts"
    path = save_checkpoint(folder / "fashion_flow.pt", {
        "model": net.state_dict(), "model_config": config.to_dict(), "step": 1, "objective": "flow",
        "flow_path": FlowPath(20).to_dict(), "config": {"dataset": "fashion_mnist"}})
    # not the shipped fashion_flow: its card records its own sha256, as a freshly trained model's does
    (folder / "fashion_flow.json").write_text(json.dumps({"sha256": download.sha256_of(path)}))
    monkeypatch.setenv("DIFFUSION_CHECKPOINTS", str(folder))
    calls = []
    real = measure_model.generate
    monkeypatch.setattr(measure_model, "generate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert measure_model.main(["fashion_flow", "--n", "10", "--fp32", str(path), "--fp16-n", "3", "--threads", "1"]) == 0
    capsys.readouterr()
    measured = json.loads((folder / "fashion_flow.json").read_text())["measured"]
    assert measured["sampler"].startswith("flow_euler, 50 steps") and "no clipping" in measured["sampler"]
    assert all(kw["sampler"] == "flow_euler" and kw["steps"] == 50 and kw["clip_x0"] is False for kw in calls)
    assert len(calls) == 3 and measured["coverage"]["n"] == 10
    assert measured["fp16_check"]["max_pixel_difference_8bit"] == 0
    assert measure_model.protocol({"objective": "diffusion", "vae": None})[::2] == ("ddim", True)
    with pytest.raises(SystemExit):
        measure_model.main(["fashion_vae"])


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_chapter_11_pair_differs_only_in_the_objective(profile):
    from diffusion_lib.training.config import config_to_dict

    ddpm, flow = (config_to_dict(pretrained.notebook_config(name, profile)) for name in ("fashion_ddpm_cpu", "fashion_flow"))
    assert flow.pop("objective") == "flow" and ddpm.pop("objective") == "diffusion"
    assert flow.pop("flow_time_sampling") == ddpm.pop("flow_time_sampling") == "uniform"
    assert flow == ddpm
