"""DistributedDataParallel: two CPU processes (gloo) train like one process with the same global batch."""

import subprocess
import sys

import torch
from _train_utils import REPO, one_thread, subprocess_env, tiny_config, tiny_overrides

from diffusion_lib import checkpoint as ck
from diffusion_lib.training import train


def test_two_processes_match_one(tmp_path):
    steps = 5  # AdamW steps; dropout 0 so the processes' own RNG streams do not matter
    settings = dict(max_steps=steps, checkpoint_every=steps, warmup_steps=0, **{"model_overrides.dropout": 0.0},
                    class_conditional="true", hflip="true")  # label dropout and flips: drawn per global batch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffusion_lib", "train", "--set", *tiny_overrides(tmp_path / "ddp", **settings)]
    env = subprocess_env()
    env["GLOO_SOCKET_IFNAME"] = "lo"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with one_thread():
        single = train(tiny_config(tmp_path / "single", **settings))
    ddp_state = ck.load_checkpoint(ck.checkpoint_path(tmp_path / "ddp", steps))
    one_state = ck.load_checkpoint(single["checkpoint"])
    assert ddp_state["world_size"] == 2 and len(ddp_state["rng"]) == 2  # every rank's RNG state is kept
    for key in ("model", "ema"):
        diff = max((ddp_state[key][k] - v).abs().max().item() for k, v in one_state[key].items())
        assert diff <= 1e-5, f"{key}: max |delta| = {diff}"
    # Only rank 0 writes: one checkpoint, one log with one row per step.
    assert [p.name for p in ck.list_checkpoints(tmp_path / "ddp")] == [f"ckpt_{steps:08d}.pt"]
    assert (tmp_path / "ddp" / "log.csv").read_text().count("\n") == steps + 1
    assert torch.equal(ddp_state["model"]["conv_out.weight"] != 0, one_state["model"]["conv_out.weight"] != 0)
