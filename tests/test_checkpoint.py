"""Checkpoint files: atomic writes, keep-last-K, clear errors for missing/truncated files, RNG states,
and load_model."""

import os
import random
import stat

import numpy as np
import pytest
import torch
from _train_utils import one_thread, tiny_config

from diffusion_lib import checkpoint as ck


def test_save_load_round_trip_weights_only(tmp_path):
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "config": {"lr": 1e-4, "betas": [0.9, 0.999]},
             "rng": [ck.rng_state()]}
    path = ck.save_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt_00000003.pt", state)
    loaded = ck.load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["format"] == ck.FORMAT
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt_00000003.pt"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) & stat.S_IRGRP  # not mkstemp's private 0600


def test_crash_during_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_00000001.pt"
    ck.save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    before = path.read_bytes()

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of torch.save

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_missing_and_truncated_files_name_the_file(tmp_path):
    out = tmp_path / "run"
    for step in (10, 20):
        ck.save_checkpoint(ck.checkpoint_path(out, step), {"model": {"w": torch.full((100,), float(step))}})
    good = ck.checkpoint_path(out, 10)
    good_bytes = good.read_bytes()
    with pytest.raises(ck.CheckpointError, match="ckpt_00000030.pt.*does not exist"):
        ck.load_checkpoint(ck.checkpoint_path(out, 30))
    latest = ck.checkpoint_path(out, 20)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated (e.g. a bad copy)
    with pytest.raises(ck.CheckpointError, match="ckpt_00000020.pt.*truncated"):
        ck.load_checkpoint(latest)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="notes.txt"):
        ck.load_checkpoint(tmp_path / "notes.txt")
    assert good.read_bytes() == good_bytes and ck.load_checkpoint(good)["model"]["w"][0] == 10


def test_keep_last_k_and_latest(tmp_path):
    out = tmp_path / "run"
    for step in (5, 10, 15, 20):
        ck.save_checkpoint(ck.checkpoint_path(out, step), {"model": {}})
    (ck.checkpoint_dir(out) / ".ckpt_00000025.pt.abc.tmp").write_bytes(b"partial")  # a killed write
    deleted = ck.prune_checkpoints(out, keep_last=2)
    assert len(deleted) == 3
    assert [p.name for p in ck.list_checkpoints(out)] == ["ckpt_00000015.pt", "ckpt_00000020.pt"]
    assert ck.latest_checkpoint(out).name == "ckpt_00000020.pt"
    assert ck.latest_checkpoint(tmp_path / "empty") is None


def test_rng_state_round_trip():
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = ck.rng_state()
    first = (torch.rand(3), random.random(), np.random.randn(3))
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    ck.set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.randn(3))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


def test_load_model_uses_ema_weights(tmp_path):
    from diffusion_lib.schedules import NoiseSchedule
    from diffusion_lib.training import train

    with one_thread():
        result = train(tiny_config(tmp_path / "run", max_steps=3, class_conditional="true"))
    model, schedule, info = ck.load_model(result["checkpoint"])
    state = ck.load_checkpoint(result["checkpoint"])
    assert not model.training and info["weights"] == "ema" and info["step"] == 3
    assert all(torch.equal(v, state["ema"][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    raw, _, raw_info = ck.load_model(result["checkpoint"], ema=False)
    assert raw_info["weights"] == "model"
    assert all(torch.equal(v, state["model"][k]) for k, v in raw.state_dict().items())
    assert isinstance(schedule, NoiseSchedule) and schedule.num_timesteps == 50
    assert (info["num_classes"], info["null_label"], info["image_shape"]) == (4, 4, (3, 8, 8))
    assert info["prediction_type"] == "epsilon" and info["config"]["batch_size"] == 8
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 8, 8), torch.tensor([0, 49]), torch.tensor([0, 4]))
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(ck.CheckpointError, match="nothing.pt"):
        ck.load_model(tmp_path / "nothing.pt")


def test_checkpoint_dir_fsync_is_harmless_without_dirs(tmp_path, monkeypatch):
    # Windows cannot open a folder; the rename is still atomic there.
    monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError("no")))
    ck._fsync_dir(tmp_path)
