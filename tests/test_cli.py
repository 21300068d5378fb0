"""python -m diffusion_lib train | sample | evaluate, run in-process through cli.main."""

import json

import pytest
from _train_utils import one_thread, tiny_overrides
from PIL import Image

from diffusion_lib import checkpoint as ck
from diffusion_lib import cli


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    with one_thread():
        rc = cli.main(["train", "--config", "configs/smoke.yaml",
                       "--set", *tiny_overrides(out, max_steps=2, class_conditional="true")])
    assert rc == 0
    return out


def test_train_prints_a_summary_and_resumes(conditional_run, capsys):
    ckpt = ck.latest_checkpoint(conditional_run)
    assert ckpt.name == "ckpt_00000002.pt"
    rc = cli.main(["train", "--set", *tiny_overrides(conditional_run, max_steps=3, class_conditional="true"), "--resume"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["start_step"] == 2 and summary["step"] == 3


def test_sample_grid(conditional_run, tmp_path, capsys):
    ckpt = ck.latest_checkpoint(conditional_run)
    out = tmp_path / "grid.png"
    assert cli.main(["sample", "--checkpoint", str(ckpt), "--steps", "3", "--n", "4", "--out", str(out)]) == 0
    assert Image.open(out).size == (4 * (8 + 2) + 2, 12)  # classes 0..3 in a row of 8x8 images, 2-pixel padding
    assert "ema weights" in capsys.readouterr().out
    guided = tmp_path / "guided.png"
    assert cli.main(["sample", "--checkpoint", str(ckpt), "--sampler", "dpm_solver", "--steps", "3", "--n", "3",
                     "--guidance-scale", "3", "--class", "2", "--nrow", "3", "--batch-size", "2", "--seed", "1", "--threads", "1",
                     "--out", str(guided)]) == 0
    assert Image.open(guided).size == (3 * 10 + 2, 12)
    assert cli.main(["sample", "--checkpoint", str(ckpt), "--sampler", "ddpm", "--n", "1", "--no-ema",
                     "--out", str(tmp_path / "ddpm.png")]) == 0


@pytest.mark.parametrize("args, message", [
    (["--class", "4"], "--class must be in [0, 3]"),
    (["--n", "0"], "--n must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_sample_bad_input(conditional_run, tmp_path, capsys, args, message):
    ckpt = ck.latest_checkpoint(conditional_run)
    assert cli.main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.png"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_guidance_needs_a_conditional_model(tmp_path, capsys):
    out = tmp_path / "uncond"
    assert cli.main(["train", "--set", *tiny_overrides(out, max_steps=1)]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(ck.latest_checkpoint(out)), "--guidance-scale", "2",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert cli.main(["train", "--config", "configs/smoke.yaml", "--set", "batch_sise=3"]) == 2
    err = capsys.readouterr().err
    assert "batch_sise" in err and "batch_size" in err and "Traceback" not in err
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_help_lists_every_subcommand_with_what_it_does(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name, command in cli.SUBCOMMANDS.items():
        assert name in out and command.help.split()[0] in out
    assert set(cli.SUBCOMMANDS) == {"train", "sample", "evaluate"} and "FID" in cli.SUBCOMMANDS["evaluate"].help