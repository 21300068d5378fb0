"""benchmarks/flow_vs_diffusion.py end to end on two tiny random UNets (one ε, one flow), the random-projection
stand-in extractor and a handful of samples; and metrics.chord_deviation on paths with known answers.

What is checked is the bookkeeping the study relies on: every arm's counted model calls (Heun's two per
step), the same noise for every arm, results written point by point and resumed, another checkpoint's
points recomputed, and the straightness of both samplers' paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _scripts import ROOT, load_script
from _train_utils import one_thread

from diffusion_lib.metrics import chord_deviation

bench = load_script(ROOT / "benchmarks" / "flow_vs_diffusion.py", "bench_flow_vs_diffusion")
render_results = load_script(ROOT / "scripts" / "render_results.py", "render_results_flow")


def tiny_checkpoint(path: Path, objective: str, seed: int = 0) -> Path:
    from diffusion_lib.checkpoint import save_checkpoint
    from diffusion_lib.models import UNet, UNetConfig
    from diffusion_lib.schedules import FlowPath, NoiseSchedule

    torch.manual_seed(seed)
    config = UNetConfig(in_channels=3, out_channels=3, image_size=8, base_channels=8, channel_mult=(1, 2),
                        num_res_blocks=1, attention_levels=(), num_groups=4)
    net = UNet(config, num_timesteps=20)
    with torch.no_grad():  # the output layer starts at zero: a zero velocity would not move the noise
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    state = {"model": net.state_dict(), "model_config": config.to_dict(), "step": 3,
             "config": {"dataset": "shapes", "image_size": 8, "dataset_kwargs": {"num_samples": 40}}}
    if objective == "flow":
        state.update(objective="flow", flow_path=FlowPath(20).to_dict())
    else:
        state.update(schedule=NoiseSchedule.linear(20, beta_start=1e-3, beta_end=0.4).to_dict(),
                     prediction_type="epsilon")
    save_checkpoint(path, state)
    return path


def test_chord_deviation_of_known_paths():
    line = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.1, 0.0]]), torch.tensor([[1.5, 0.0]]), torch.tensor([[2.0, 0.0]])]
    assert chord_deviation(line).item() == 0.0  # straight, at any speed
    corner = [torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])]
    assert chord_deviation(corner).item() == pytest.approx(0.25)  # mean distance 1/2 along it, chord 2
    # a quarter circle of radius 1: distance cos(θ − π/4) − 1/√2 from the chord of length √2; its mean over
    # arc length is (2/π)(√2 − π/(2√2)), so the deviation is (2/π)(1 − π/4), however the points are spaced
    expected = (2 / math.pi) * (1 - math.pi / 4)
    for spacing in (lambda u: u, lambda u: u**3):  # uniform, and crowded at the start as DDIM's states are
        theta = math.pi / 2 * spacing(torch.linspace(0, 1, 4001, dtype=torch.float64))
        arc = [torch.stack([torch.cos(a), torch.sin(a)])[None] for a in theta]
        assert chord_deviation(arc).item() == pytest.approx(expected, rel=1e-4)


def test_chord_deviation_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        chord_deviation([torch.zeros(1, 2), torch.ones(1, 2)])
    with pytest.raises(ValueError, match="one shape"):
        chord_deviation([torch.zeros(1, 2), torch.ones(1, 3), torch.ones(1, 2)])
    with pytest.raises(ValueError, match="length 0"):
        chord_deviation([torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2)])


def test_heun_points_sit_at_their_true_calls():
    assert [bench.steps_for("flow_heun", c) for c in (5, 10, 20, 50)] == [2, 5, 10, 25]
    assert [bench.steps_for("ddim", c) for c in (5, 10, 20, 50)] == [5, 10, 20, 50]
    assert bench.steps_for("flow_heun", 1) == 1


def test_flow_vs_diffusion_end_to_end_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    ddpm, flow = tiny_checkpoint(tmp_path / "ddpm.pt", "diffusion"), tiny_checkpoint(tmp_path / "flow.pt", "flow", 1)
    out = tmp_path / "flow_vs_diffusion.json"
    args = ["--ddpm", str(ddpm), "--flow", str(flow), "--calls", "3", "4", "--n", "6", "--batch-size", "4",
            "--straightness-n", "5", "--straightness-steps", "4", "--fid-reference", "12",
            "--extractor", "random-projection-64", "--device", "cpu", "--out", str(out)]
    with one_thread():
        assert bench.main(args) == 0
    data = json.loads(out.read_text())
    calls = {(p["arm"], p["steps"]): p["model_calls"] for p in data["points"]}
    assert calls == {("ddim", 3): 3, ("ddim", 4): 4, ("dpm_solver", 3): 3, ("dpm_solver", 4): 4,
                     ("flow_euler", 3): 3, ("flow_euler", 4): 4, ("flow_heun", 1): 2, ("flow_heun", 2): 4}
    assert all(p["n"] == 6 and p["fid"] > 0 and p["fid_n_reference"] == 12 for p in data["points"])
    sha = {name: data["models"][name]["sha256"] for name in ("ddpm", "flow")}
    assert all(p["checkpoint_sha256"] == sha[p["model"]] for p in data["points"])
    assert data["protocol"]["clip_x0"] is False
    straight = data["straightness"]
    assert set(straight) == {"ddim", "flow_euler"}
    assert all(r["n"] == 5 and r["steps"] == 4 and r["model_calls"] == 4 and 0 < r["mean"] < 1 for r in straight.values())

    # resumed: nothing recomputed, then a new flow checkpoint recomputes only the flow arms
    before = {(p["arm"], p["steps"]): p["machine"]["date"] + str(p["fid"]) for p in data["points"]}
    flow2 = tiny_checkpoint(tmp_path / "flow2.pt", "flow", 2)
    with one_thread():
        assert bench.main(args) == 0
        assert json.loads(out.read_text())["points"] == data["points"]
        assert bench.main([*args[:2], "--flow", str(flow2), *args[4:]]) == 0
    again = json.loads(out.read_text())
    for p in again["points"]:
        unchanged = p["machine"]["date"] + str(p["fid"]) == before[(p["arm"], p["steps"])]
        assert unchanged == (p["model"] == "ddpm")
    assert again["straightness"]["flow_euler"]["checkpoint_sha256"] != straight["flow_euler"]["checkpoint_sha256"]
    assert len(again["commands"]) == 3

    # the results page: one table row per point with its FID, the straightness table, the figure
    page = render_results.render(out.parent, tmp_path / "book").read_text()
    section = page.split("## Flow matching against diffusion at few model calls")[1].split("\n## ")[0]
    for p in again["points"]:
        assert f"| {p['steps']} | {p['model_calls']:g} | 6 | {p['fid']:,.1f} |" in section
    assert f"| 4 | 5 | {again['straightness']['flow_euler']['mean']:.3f} |" in section
    assert (tmp_path / "book" / "_static" / "results" / "flow_vs_diffusion.png").is_file()


def test_same_noise_for_every_arm(tmp_path):
    """One step of flow Euler from t = 1 to 0 returns x_T − u_θ(x_T, 1): the draw starts from the noise given."""
    flow = tiny_checkpoint(tmp_path / "flow.pt", "flow")
    model, path, info, _ = bench.load(flow, "flow", "cpu")
    noise = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images, calls = bench.draw(model, path, info, "flow_euler", 1, noise, 2, "cpu")
    with torch.no_grad():
        expected = noise - model(noise, torch.full((5,), 19.0))
    assert calls == 1 and torch.allclose(images, expected.clamp(-1, 1), atol=1e-5)  # batches of 2 against 5: round-off
    with pytest.raises(SystemExit, match="flow checkpoint"):
        bench.load(tiny_checkpoint(tmp_path / "d.pt", "diffusion"), "flow", "cpu")


def test_two_processes_share_the_results_file(tmp_path, monkeypatch):
    """Two runs of different arms at once (threads here, processes on a machine) keep each other's points."""
    import threading

    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    ddpm, flow = tiny_checkpoint(tmp_path / "ddpm.pt", "diffusion"), tiny_checkpoint(tmp_path / "flow.pt", "flow", 1)
    out = tmp_path / "shared.json"
    common = ["--ddpm", str(ddpm), "--flow", str(flow), "--calls", "2", "3", "4", "--n", "4", "--batch-size", "4",
              "--fid-reference", "8", "--extractor", "random-projection-64", "--device", "cpu", "--out", str(out),
              "--parts", "fid"]
    codes = []
    lanes = [threading.Thread(target=lambda arm=arm: codes.append(bench.main([*common, "--arms", arm])))
             for arm in ("ddim", "flow_euler")]
    with one_thread():
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
    data = json.loads(out.read_text())
    assert codes == [0, 0]
    assert sorted((p["arm"], p["steps"]) for p in data["points"]) == [
        ("ddim", 2), ("ddim", 3), ("ddim", 4), ("flow_euler", 2), ("flow_euler", 3), ("flow_euler", 4)]
    assert len(data["commands"]) == 2


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="nope.pt"):
        bench.main(["--ddpm", str(tmp_path / "nope.pt"), "--flow", str(tmp_path / "nope.pt"), "--out",
                    str(tmp_path / "out.json")])
