"""The training objective, EMA, data order, and the loop: exact resume after SIGKILL, NaN handling,
bad input."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _train_utils import REPO, loss_after_steps, one_thread, state_tensors, subprocess_env, tiny_config, tiny_overrides
from torch.utils.data import TensorDataset

from diffusion_lib import checkpoint as ck
from diffusion_lib import device as devices
from diffusion_lib.training.tasks import diffusion as diffusion_task
from diffusion_lib.training.config import ConfigError
from diffusion_lib.training.randomness import DataOrder, StepRandom
from diffusion_lib.training.ema import ema_decay_at, make_ema
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.objective import diffusion_loss, drop_labels, min_snr_weight
from diffusion_lib.training import NonFiniteLossError, train


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ---------------------------------------------------------------------------------- objective
class Oracle(torch.nn.Module):
    """Returns a fixed function of (x_t, t): lets a test compute the loss by hand."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x_t, t, y=None):
        return self.scale * x_t


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusion_loss_by_hand(prediction_type):
    schedule = NoiseSchedule.linear(100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 2, 4, 4, generator=g) * 2 - 1, torch.randn(6, 2, 4, 4, generator=g)
    t = torch.tensor([0, 10, 50, 99, 3, 70])
    ab = schedule.alpha_bar.float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"epsilon": noise, "sample": x0, "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction_type]
    per_sample = ((0.5 * x_t - target) ** 2).mean(dim=(1, 2, 3))
    loss = diffusion_loss(Oracle(), schedule, x0, t=t, noise=noise, prediction_type=prediction_type)
    torch.testing.assert_close(loss, per_sample.mean())

    # Min-SNR-γ (Hang et al. 2023): every objective becomes min(SNR, γ)·‖x0 − x̂0‖².
    snr = schedule.snr.float()[t]
    w = min_snr_weight(schedule, t, 5.0, prediction_type)
    expected = {"epsilon": snr.clamp(max=5) / snr, "sample": snr.clamp(max=5),
                "v_prediction": snr.clamp(max=5) / (snr + 1)}[prediction_type]
    torch.testing.assert_close(w, expected)
    weighted = diffusion_loss(Oracle(), schedule, x0, t=t, noise=noise, prediction_type=prediction_type, min_snr_gamma=5.0)
    torch.testing.assert_close(weighted, (per_sample * expected).mean())


def test_diffusion_loss_draws_from_the_generator():
    schedule = NoiseSchedule.linear(100)
    x0 = torch.zeros(4, 1, 4, 4)
    a = diffusion_loss(Oracle(), schedule, x0, generator=torch.Generator().manual_seed(1))
    b = diffusion_loss(Oracle(), schedule, x0, generator=torch.Generator().manual_seed(1))
    c = diffusion_loss(Oracle(), schedule, x0, generator=torch.Generator().manual_seed(2))
    assert a == b and a != c


def test_label_dropout_rate():
    y = torch.zeros(20_000, dtype=torch.long)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    dropped = (drop_labels(y, 0.1, 10, u) == 10).float().mean().item()
    assert abs(dropped - 0.1) < 4 * (0.1 * 0.9 / 20_000) ** 0.5
    with pytest.raises(ValueError, match="null_label"):
        diffusion_loss(Oracle(), NoiseSchedule.linear(10), torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                       p_uncond=0.5)


def test_train_step_lowers_the_loss():
    from diffusion_lib.models import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                            attention_levels=(), num_groups=4, dropout=0.0))
    schedule = NoiseSchedule.linear(50)
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    before = loss_after_steps(model, schedule, x0, steps=0)
    assert loss_after_steps(model, schedule, x0) < 0.7 * before


# ------------------------------------------------------------------------------- EMA and data order
def test_ema_warmup_and_update():
    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1) and ema_decay_at(0.9999, 10**7) == 0.9999
    assert ema_decay_at(0.9, 0, warmup=False) == 0.9
    model = torch.nn.Linear(2, 2)
    ema = make_ema(model, decay=0.5)
    expected = model.weight.detach().clone()  # the first update copies
    for n in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model)
        d = ema_decay_at(0.5, n) if n else 0.0
        expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected)
    assert int(ema.n_averaged) == 4


def test_data_order_is_a_function_of_the_step():
    order = DataOrder(10, 4, seed=3)  # 2 steps per epoch, 2 items dropped per epoch
    it = iter(order)
    batches = [next(it) for _ in range(6)]
    for epoch in range(3):
        seen = batches[2 * epoch] + batches[2 * epoch + 1]
        assert len(set(seen)) == 8 and seen == order.permutation(epoch)[:8].tolist()
    assert batches[0] != batches[2]  # a new permutation each epoch
    resumed = iter(DataOrder(10, 4, seed=3, start_step=3))
    assert [next(resumed) for _ in range(3)] == batches[3:]
    shards = [iter(DataOrder(10, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert [next(shards[0]) + next(shards[1]) for _ in range(6)] == batches
    assert order.state(5) == {"epoch": 2, "position": 1, "seed": 3, "step": 5, "steps_per_epoch": 2,
                              "dataset_size": 10, "global_batch_size": 4}
    with pytest.raises(ValueError, match="divisible"):
        DataOrder(10, 4, seed=0, world_size=3)
    with pytest.raises(ValueError, match="larger than the dataset"):
        DataOrder(3, 4, seed=0)


def test_step_random_shards_equal_one_process():
    x = torch.zeros(3, 2, 2, 2)
    one = StepRandom(7, 11, 6)
    two = [StepRandom(7, 11, 6, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(one.randint(100), torch.cat([r.randint(100) for r in two]))
    assert torch.equal(one.randn_like(torch.zeros(6, 2, 2, 2)), torch.cat([r.randn_like(x) for r in two]))
    assert torch.equal(one.rand(), torch.cat([r.rand() for r in two]))
    assert not torch.equal(StepRandom(7, 12, 6).rand(), StepRandom(7, 11, 6).rand())


# ------------------------------------------------------------------------------------ the loop
def test_training_run_writes_log_checkpoints_and_samples(tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(out, max_steps=4, checkpoint_every=2, keep_last=1, sample_every=4, sample_n=4,
                               sample_steps=3, class_conditional="true", hflip="true", prediction_type="v_prediction",
                               min_snr_gamma=5.0, log_every=2))
    assert result["step"] == 4 and [s for s, _ in result["history"]] == [2, 4]
    assert [p.name for p in ck.list_checkpoints(out)] == ["ckpt_00000004.pt"]  # keep_last=1
    assert (out / "samples" / "step_00000004.png").is_file()
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4] and all(float(r["loss"]) > 0 for r in rows)
    state = ck.load_checkpoint(result["checkpoint"])
    assert state["prediction_type"] == "v_prediction" and state["model_config"]["num_classes"] == 4
    assert state["data_order"]["step"] == 4 and state["ema_num_averaged"] == 4
    with pytest.raises(FileExistsError, match="resume"):  # never mixes two runs in one folder silently
        train(tiny_config(out, max_steps=4))


def run_until_killed(out, every: int) -> int:
    """Start a long CLI run, SIGKILL it once the first checkpoint exists; return the latest step."""
    args = [sys.executable, "-m", "diffusion_lib", "train", "--set",
            *tiny_overrides(out, max_steps=10_000, checkpoint_every=every, keep_last=100)]
    proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = ck.checkpoint_path(out, every)
    deadline = time.monotonic() + 120
    while not first.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return ck.load_checkpoint(ck.latest_checkpoint(out))["step"]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    n = 3
    killed = run_until_killed(tmp_path / "killed", every=n)  # usually n, later if the kill came late
    total = killed + n
    resumed = train(tiny_config(tmp_path / "killed", max_steps=total), resume=True)
    straight = train(tiny_config(tmp_path / "straight", max_steps=total))
    assert resumed["start_step"] == killed and resumed["step"] == straight["step"] == total

    a, b = (ck.load_checkpoint(r["checkpoint"]) for r in (resumed, straight))
    tensors_a, tensors_b = dict(state_tensors(a)), dict(state_tensors(b))
    for prefix in ("model.", "ema.", "optimizer."):
        names = [k for k in tensors_a if k.startswith(prefix)]
        assert names, prefix
        for k in names:
            assert torch.equal(tensors_a[k], tensors_b[k]), f"{k} differs after resume"
    assert a["data_order"] == b["data_order"] and torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    # The log holds each step once: rows written after the last checkpoint by the killed run are gone.
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "killed" / "log.csv"))]
    assert steps == list(range(1, total + 1))


def test_max_minutes_stops_at_a_log_step_with_a_checkpoint_and_resume_continues_exactly(tmp_path):
    out = tmp_path / "timed"
    stopped = train(tiny_config(out, max_steps=1000, max_minutes=1e-9, log_every=2))  # out of time at once
    assert stopped["step"] == 2 and stopped["checkpoint"] == str(ck.checkpoint_path(out, 2))
    resumed = train(tiny_config(out, max_steps=4), resume=True)
    straight = train(tiny_config(tmp_path / "straight", max_steps=4))
    a, b = (dict(state_tensors(ck.load_checkpoint(r["checkpoint"]))) for r in (resumed, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(out, max_steps=2, checkpoint_every=2))
    good = ck.checkpoint_path(out, 2)
    good_bytes = good.read_bytes()

    real_loss, calls = diffusion_task.diffusion_loss, []

    def poisoned(*args, **kwargs):  # the loss of step 4 (a checkpoint step) becomes NaN
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(diffusion_task, "diffusion_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"nan at step 4.*ckpt_00000002\.pt"):
        train(tiny_config(out, max_steps=6, checkpoint_every=2), resume=True)
    assert good.read_bytes() == good_bytes
    assert sorted(p.name for p in ck.checkpoint_dir(out).iterdir()) == ["ckpt_00000002.pt"]  # nothing else, no temp


def test_truncated_latest_checkpoint_blocks_resume_and_names_the_file(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, max_steps=4, checkpoint_every=2))
    earlier, latest = ck.list_checkpoints(out)
    earlier_bytes = earlier.read_bytes()
    latest.write_bytes(latest.read_bytes()[:1000])  # e.g. an interrupted copy to Google Drive
    with pytest.raises(ck.CheckpointError, match=r"ckpt_00000004\.pt.*truncated(.|\n)*ckpt_00000002\.pt"):
        train(tiny_config(out, max_steps=6), resume=True)
    assert earlier.read_bytes() == earlier_bytes
    result = train(tiny_config(out, max_steps=6), resume=earlier)  # resuming from the earlier one works
    assert result["start_step"] == 2 and result["step"] == 6


def test_trainer_takes_any_model_and_loss(tmp_path):
    # The generic loop (used for the VAE too): any module, any loss_fn(model, x, y, rng), extra state.
    from diffusion_lib.training import Trainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.Linear(3, 12))
    data = TensorDataset(torch.randn(32, 3, 2, 2), torch.zeros(32, dtype=torch.long))

    def loss_fn(net, x, y, rng):
        noisy = x + 0.1 * rng.randn_like(x)
        return ((net(noisy) - x.flatten(1)) ** 2).mean()

    trainer = Trainer(tiny_config(tmp_path / "ae", max_steps=6, checkpoint_every=3, lr=1e-2), model, data, loss_fn,
                      extra_state={"kind": "autoencoder"})
    result = trainer.fit()
    state = ck.load_checkpoint(result["checkpoint"])
    assert state["kind"] == "autoencoder" and state["step"] == 6 and result["history"][-1][1] < result["history"][0][1]


def test_infinite_lr_is_caught(tmp_path):
    # An exploding step: after an update with a huge lr the next loss is not finite.
    with pytest.raises(NonFiniteLossError, match="step"):
        train(tiny_config(tmp_path / "run", lr=1e30, grad_clip="null", warmup_steps=0, max_steps=5, checkpoint_every=1))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_paths_resume_exactly(tmp_path, precision):
    # The CUDA paths (fp16 + GradScaler, as on a T4; bf16) also run on the CPU: same code, checked here.
    out = tmp_path / "run"
    train(tiny_config(out, precision=precision, max_steps=2, checkpoint_every=2))
    resumed = ck.load_checkpoint(train(tiny_config(out, precision=precision, max_steps=4), resume=True)["checkpoint"])
    straight = ck.load_checkpoint(train(tiny_config(tmp_path / "straight", precision=precision, max_steps=4))["checkpoint"])
    assert resumed["scaler"] == straight["scaler"]
    assert (resumed["scaler"].get("scale") is not None) == (precision == "fp16")  # a scaler only for fp16
    assert all(torch.equal(v, straight["model"][k]) for k, v in resumed["model"].items())
    assert all(torch.isfinite(v).all() for v in resumed["model"].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_cuda_autocast_channels_last(tmp_path, precision):
    out = tmp_path / precision
    result = train(tiny_config(out, device="cuda", precision=precision, max_steps=3, checkpoint_every=2))
    state = ck.load_checkpoint(result["checkpoint"])
    assert all(torch.isfinite(v).all() for v in state["model"].values()) and "cuda" in state["rng"][0]
    assert bool(state["scaler"]) == (precision == "fp16" or (precision == "auto" and not devices.cuda_bf16_supported()))
    resumed = train(tiny_config(out, device="cuda", precision=precision, max_steps=4), resume=True)
    assert resumed["start_step"] == 3 and resumed["step"] == 4
    model, _, info = ck.load_model(resumed["checkpoint"], device="cuda")
    assert next(model.parameters()).is_cuda and info["step"] == 4


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"shape \(3, 16, 16\)"):  # images larger than the model takes
        train(tiny_config(tmp_path / "b"), dataset=TensorDataset(torch.zeros(16, 3, 16, 16), torch.zeros(16).long()))
    with pytest.raises(ConfigError, match=r"shape \(1, 8, 8\)"):  # grayscale images, colour model
        train(tiny_config(tmp_path / "c"), dataset=TensorDataset(torch.zeros(16, 1, 8, 8), torch.zeros(16).long()))
    labels = torch.full((16,), 7)  # a class the 4-class model does not have
    with pytest.raises(ValueError, match="label 7 out of range"):
        train(tiny_config(tmp_path / "d", class_conditional="true", p_uncond=0.0, **{"model_overrides.num_classes": 4}),
              dataset=TensorDataset(torch.zeros(16, 3, 8, 8), labels))
    with pytest.raises(ValueError, match="batch_size.*larger than the dataset"):
        train(tiny_config(tmp_path / "e", batch_size=32), dataset=TensorDataset(torch.zeros(16, 3, 8, 8),
                                                                               torch.zeros(16).long()))
    with pytest.raises(ck.CheckpointError, match="missing.pt"):
        train(tiny_config(tmp_path / "f"), resume=tmp_path / "missing.pt")
