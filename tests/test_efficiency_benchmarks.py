"""The efficiency and schedule-comparison benchmarks and the results page, end to end on tiny models.

A 16 × 16 UNet of ~40k parameters with T = 20, the random-projection stand-in extractor and a handful of
samples: seconds, not the study. What is checked is the bookkeeping the study relies on: the model calls
each arm really makes, one fresh process per timed arm with its memory peak above its baseline, the
claims computed from DDPM and DDIM-T/4, resumable pieces merged into one JSON, results of another
checkpoint refused, and the results page rendered from whatever JSON exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _scripts import ROOT, load_script
from _train_utils import one_thread


efficiency = load_script(ROOT / "benchmarks" / "efficiency.py", "bench_efficiency")
schedule_comparison = load_script(ROOT / "benchmarks" / "schedule_comparison.py", "bench_schedule_comparison")
render_results = load_script(ROOT / "scripts" / "render_results.py", "render_results")

TINY = ["dataset=shapes", "dataset_kwargs={num_samples: 32}", "image_size=8", "model=cifar_small",
        ("model_overrides={base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_levels: [1], "
         "num_groups: 4}"), "num_timesteps=20", "batch_size=4", "max_steps=2", "checkpoint_every=1",
        "progress=false", "log_every=1", "warmup_steps=1"]


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    from diffusion_lib.checkpoint import save_checkpoint
    from diffusion_lib.models import UNet, UNetConfig
    from diffusion_lib.schedules import NoiseSchedule

    torch.manual_seed(seed)
    config = UNetConfig(in_channels=3, out_channels=3, image_size=16, base_channels=8, channel_mult=(1, 2),
                        num_res_blocks=1, attention_levels=(), num_groups=4)
    save_checkpoint(path, {"model": UNet(config).state_dict(), "model_config": config.to_dict(),
                           "schedule": NoiseSchedule.linear(20, beta_start=1e-3, beta_end=0.4).to_dict(), "step": 3,
                           "prediction_type": "epsilon",
                           "config": {"dataset": "shapes", "image_size": 16, "schedule": "linear",
                                      "dataset_kwargs": {"num_samples": 40}}})
    return path


def test_arm_names_and_their_errors():
    assert efficiency.parse_arm("ddpm", 1000) == {"arm": "ddpm", "sampler": "ddpm", "steps": None, "nfe": 1000}
    assert efficiency.parse_arm("ddpm1000", 1000)["nfe"] == 1000
    assert efficiency.parse_arm("dpm20", 1000) == {"arm": "dpm20", "sampler": "dpm_solver", "steps": 20, "nfe": 20}
    for bad in ("ddpm250", "ddim", "ddim0", "ddim2000", "euler10"):
        with pytest.raises(ValueError, match="arm"):
            efficiency.parse_arm(bad, 1000)


def test_claims_compare_ddpm_with_ddim_at_a_quarter_of_the_steps():
    def arm(name, sampler, steps, calls, wall, peak):
        return {"arm": name, "sampler": sampler, "steps": steps, "nfe": calls, "batch": 64, "model_calls": calls,
                "wall_seconds": wall, "cpu_seconds": wall, "baseline": {"rss_mib": 500.0}, "peak": {"rss_mib": peak}}

    timing = {"ddpm": arm("ddpm", "ddpm", None, 1000, 400.0, 700.0), "ddim100": arm("ddim100", "ddim", 100, 100, 40.0, 700.0)}
    assert efficiency.claims(timing) is None  # no DDIM-250 yet
    timing["ddim250"] = arm("ddim250", "ddim", 250, 250, 101.0, 707.0)
    c = efficiency.claims(timing)
    assert c["ddim_arm"] == "ddim250" and c["model_call_ratio"] == 4.0
    assert c["wall_time_ratio"] == pytest.approx(400 / 101)
    assert c["peak_memory_change"] == pytest.approx(0.01) and c["peak_above_baseline_change"] == pytest.approx(0.035)


@pytest.fixture(scope="module")
def efficiency_run(tmp_path_factory):
    """One run of the study on a tiny checkpoint: timing (two fresh processes), one arm's samples drawn
    alone (as on a GPU), then quality, as three pieces."""
    tmp = tmp_path_factory.mktemp("efficiency")
    checkpoint = tiny_checkpoint(tmp / "tiny.pt")
    out = tmp / "efficiency.json"
    common = ["--checkpoint", str(checkpoint), "--out", str(out), "--work-dir", str(tmp / "work"),
              "--device", "cpu", "--threads", "1"]
    patch = pytest.MonkeyPatch()
    patch.setenv("DIFFUSION_CACHE", str(tmp / "cache"))
    try:
        with one_thread():
            assert efficiency.main(common + ["--parts", "timing", "--arms", "ddpm", "ddim5", "--batch", "2"]) == 0
            sampling = ["--n-fid", "12", "--n-kid", "8", "--fid-max-nfe", "4", "--sample-batch", "6", "--clip-x0"]
            assert efficiency.main(common + ["--parts", "samples", "--arms", "dpm4", *sampling]) == 0
            assert efficiency.main(common + ["--parts", "quality", "--arms", "ddim5", "dpm4", *sampling,
                                             "--kid-reference", "10", "--fid-reference", "12",
                                             "--extractor", "random-projection-64"]) == 0
    finally:
        patch.undo()
    return tmp, checkpoint, out


def test_efficiency_timing_counts_calls_and_measures_memory_per_process(efficiency_run):
    _, _, out = efficiency_run
    data = json.loads(out.read_text())
    timing = data["timing"]["arms"]
    assert set(timing) == {"ddpm", "ddim5"}
    assert timing["ddpm"]["model_calls"] == 20 and timing["ddim5"]["model_calls"] == 5
    for t in timing.values():
        assert t["finite"] and t["batch"] == 2 and t["seconds_per_image"] > 0
        assert t["peak"]["rss_mib"] >= t["baseline"]["rss_mib"] > 100  # a fresh interpreter with torch loaded
        assert t["machine"]["device"] == "cpu" and t["machine"]["date"]
    claims = data["timing"]["claims"]
    assert claims["ddim_arm"] == "ddim5" and claims["model_call_ratio"] == 4.0
    assert abs(claims["peak_memory_change"]) < 0.25  # same tensors at equal batch (loose: tiny model, noisy RSS)
    assert data["model"]["num_timesteps"] == 20 and len(data["model"]["sha256"]) == 64


def test_efficiency_quality_merges_pieces_and_labels_kid_and_fid(efficiency_run):
    tmp, _, out = efficiency_run
    data = json.loads(out.read_text())
    assert set(data["timing"]["arms"]) == {"ddpm", "ddim5"}  # the timing piece is kept
    quality = data["quality"]["arms"]
    assert quality["ddim5"]["fid"] is None and quality["ddim5"]["n_samples"] == 8  # 5 calls > --fid-max-nfe 4
    assert quality["dpm4"]["fid"]["n"] == 12 and quality["dpm4"]["fid"]["extractor"] == "random-projection-64"
    assert quality["dpm4"]["kid"]["n"] == 8 and quality["dpm4"]["kid"]["label"].startswith("KID-8")
    assert data["quality"]["reference"]["kid_n"] == 10 and len(data["commands"]) == 3
    for arm in quality.values():  # dpm4's samples came from the samples piece, with where they were drawn
        assert arm["sampled_on"] == data["timing"]["arms"]["ddpm"]["machine"]["device_name"]
        assert arm["sampling_seconds"] > 0
    assert len(list((tmp / "work").rglob("samples_*_clip_*.pt"))) == 2
    assert quality["dpm4"]["clip_x0"] and quality["ddim5"]["clip_x0"]  # as asked: x0 clipped at every step


def test_efficiency_refuses_results_of_another_checkpoint(efficiency_run, tmp_path):
    _, _, out = efficiency_run
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(SystemExit, match="another checkpoint"):
        efficiency.main(["--checkpoint", str(other), "--out", str(out), "--parts", "timing", "--arms", "ddim5",
                         "--device", "cpu"])


def test_schedule_comparison_trains_both_runs_alike_and_scores_every_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "schedule_comparison_small.json"
    args = ["--size", "small", "--set", *TINY, "--runs-dir", str(tmp_path / "runs"), "--n", "6",
            "--kid-reference", "8", "--extractor", "random-projection-64", "--sampler-steps", "3",
            "--sample-batch", "6", "--device", "cpu", "--out", str(out)]
    with one_thread():
        assert schedule_comparison.main(args) == 0
    data = json.loads(out.read_text())
    assert data["evaluation"]["metric"] == "kid" and data["evaluation"]["extractor"] == "random-projection-64"
    for schedule in ("linear", "cosine"):
        run = data["runs"][schedule]
        assert run["training"]["steps"] == 2
        assert [p["step"] for p in run["points"]] == [1, 2]
        assert all(p["n"] == 6 and p["kid_std"] >= 0 for p in run["points"])
    from diffusion_lib.checkpoint import load_model

    _, lin, _ = load_model(tmp_path / "runs" / "linear" / "checkpoints" / "ckpt_00000002.pt")
    _, cos, _ = load_model(tmp_path / "runs" / "cosine" / "checkpoints" / "ckpt_00000002.pt")
    assert lin.num_timesteps == cos.num_timesteps == 20 and not torch.allclose(lin.alpha_bar, cos.alpha_bar)
    before = out.read_text()
    with one_thread():  # everything already scored: nothing is recomputed
        assert schedule_comparison.main([*args[:-2], "--parts", "eval", "--out", str(out)]) == 0
    after = json.loads(out.read_text())
    assert after["runs"] == json.loads(before)["runs"]


def test_results_page_renders_every_benchmark_file(efficiency_run, tmp_path):
    _, _, out = efficiency_run
    results = tmp_path / "results"
    results.mkdir()
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        if path.name != "efficiency.json" and not path.name.startswith("schedule_comparison"):
            (results / path.name).write_text(path.read_text())
    page = render_results.render(results, tmp_path / "book")  # no efficiency study yet: the command to run it
    text = page.read_text()
    assert "Not measured yet" in text and "benchmarks/efficiency.py" in text
    (results / "efficiency.json").write_text(out.read_text())
    text = render_results.render(results, tmp_path / "book").read_text()
    assert "| ddim5 | 5 | 5 |" in text and "The source report's claims" in text
    assert (tmp_path / "book" / "_static" / "results" / "efficiency.png").stat().st_size > 1000
    assert text.startswith("# Benchmark results") and "Measured on: cpu" in text


def test_results_page_names_the_machine_and_ends_notes_in_a_full_stop():
    machine = {"device": "cpu", "platform": "Linux-6.1-x86_64", "cpu_count": 2, "torch": "2.1"}
    assert render_results.machine_line(machine) == "cpu: Linux-6.1-x86_64 (CPU model not recorded), 2 cores, torch 2.1"
    assert render_results.machine_line({**machine, "cpu": "AMD EPYC"}).startswith("cpu: AMD EPYC, 2 cores")
    assert render_results.machine_line({**machine, "device": "cuda", "device_name": "NVIDIA H200", "cpu": "AMD EPYC"}
                                       ).startswith("cuda: NVIDIA H200,")
    assert [render_results.sentence(t) for t in ("not the weights", "done.", "")] == ["not the weights.", "done.", ""]
