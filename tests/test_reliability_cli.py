"""The command line and its checks before compute (issue 15, items 3 and 4).

Each bad input below once ended in a traceback, or failed only after sampling or training had begun.
Every case runs ``cli.main`` in-process and asserts exit code 2, one line on stderr naming the option
and the bad value, and that nothing was computed: the sampler and the training step are replaced by
functions that fail the test if they are ever called.
"""

import math

import pytest
import torch
from _train_utils import REPO, one_thread, tiny_overrides

from diffusion_lib import checkpoint as ck
from diffusion_lib import cli
from diffusion_lib.schedules import NoiseSchedule


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step, class-conditional run on the 8x8 shapes (linear schedule, base_channels 8)."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    with one_thread():
        assert cli.main(["train", "--set", *tiny_overrides(out, max_steps=1, class_conditional="true")]) == 0
    return out


@pytest.fixture
def no_compute(monkeypatch):
    """Sampling or a training step fails the test: the error must come before them."""
    import diffusion_lib.pipelines.evaluate as evaluate
    import diffusion_lib.pipelines.generate as generate
    from diffusion_lib.training.trainer import Trainer

    def forbidden(*args, **kwargs):
        raise AssertionError("computed before the bad input was reported")

    monkeypatch.setattr(generate, "generate", forbidden)
    monkeypatch.setattr(evaluate, "generate", forbidden)
    monkeypatch.setattr(Trainer, "training_step", forbidden)


def user_error(capsys, argv, *expected) -> str:
    """Run the command line; it must exit 2 with one line naming ``expected``; returns the line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"diffusion_lib {argv[0]}: error: "), err
    for text in expected:
        assert text in err, err
    return err


def train_args(run, *overrides, resume=True):
    args = ["train", "--set", *tiny_overrides(run, max_steps=2, class_conditional="true"), *overrides]
    return args + ["--resume"] if resume else args


def eval_args(run, tmp_path, *extra):
    return ["evaluate", "--checkpoint", str(ck.latest_checkpoint(run)), "--n", "4", "--steps", "2",
            "--extractor", "random-projection-64", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "eval.json"), *extra]


# ------------------------------------------------------------------- resume: another model or schedule
def test_resume_from_another_preset_names_the_differing_field(run, capsys, no_compute):
    wider = ("model_overrides={base_channels: 16, channel_mult: [1, 2], num_res_blocks: 1, attention_levels: [1], "
             "num_groups: 4, dropout: 0.1}")
    user_error(capsys, train_args(run, wider), "--resume", "model_config.base_channels: 16 (checkpoint: 8)",
               "model_overrides")


def test_resume_from_the_classifier_file_is_refused(run, capsys, no_compute):
    classifier = REPO / "checkpoints" / "fashion_classifier.pt"
    capsys.readouterr()
    assert cli.main(train_args(run, resume=False) + ["--resume", str(classifier)]) == 2
    err = capsys.readouterr().err
    assert "fashion_classifier.pt" in err and "not a training checkpoint" in err and "Traceback" not in err


def test_resume_with_another_schedule_is_an_error_not_a_warning(run, capsys, no_compute):
    user_error(capsys, train_args(run, "schedule=cosine"), "--resume", "schedule: cosine(",
               "(checkpoint: linear(beta_start=0.0001, beta_end=0.02, T=50))", "changed config keys: schedule")


# ---------------------------------------------------------------------------- config checked up front
@pytest.mark.parametrize("override, expected", [
    ("dataset_kwargs.numsamples=64", ["'dataset_kwargs'", "numsamples", "num_samples"]),
    ("lr=1e39", ["'lr'", "1e+39", "finite in float32"]),
    ("sample_guidance_scale=.inf", ["'sample_guidance_scale'", "inf", "a finite number >= 0"]),
    ("schedule_kwargs={max_beta: 2}", ["'schedule'", "max_beta must be in (0, 1], got 2"]),
])
def test_bad_config_values_fail_before_training(tmp_path, capsys, no_compute, override, expected):
    args = ["train", "--set", *tiny_overrides(tmp_path / "run", schedule="cosine"), override]
    user_error(capsys, args, *expected)
    assert not ck.list_checkpoints(tmp_path / "run")


def test_schedule_errors_name_the_bad_beta():
    with pytest.raises(ValueError, match=r"betas\[1\] = 1\.5 \(1 of 3 outside\)"):
        NoiseSchedule.from_betas([0.1, 1.5, 0.2])
    with pytest.raises(ValueError, match=r"betas\[0\] = 1\.0 of 2"):
        NoiseSchedule.from_betas([1.0, 0.5])


# ------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_a_device_this_machine_lacks_is_refused(run, tmp_path, capsys, no_compute, command):
    if command == "train":
        args = train_args(tmp_path / "new", "device=tpu", resume=False)
        user_error(capsys, args, "'device'", "'tpu'")
        return
    base = (["sample", "--checkpoint", str(ck.latest_checkpoint(run)), "--out", str(tmp_path / "x.png")]
            if command == "sample" else eval_args(run, tmp_path))
    user_error(capsys, [*base, "--device", "tpu"], "device must be", "'tpu'")
    if not torch.cuda.is_available():
        user_error(capsys, [*base, "--device", "cuda"], "'cuda'", "CUDA is not available")


# ----------------------------------------------------------------------------------- unwritable outputs
@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_an_unwritable_output_fails_before_compute(run, tmp_path, capsys, no_compute, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    target = blocker / "out"  # a path below a file: no user, root included, can write there
    if command == "sample":
        args = ["sample", "--checkpoint", str(ck.latest_checkpoint(run)), "--out", str(target / "grid.png")]
        option = "--out"
    elif command == "evaluate":
        args = [*eval_args(run, tmp_path), "--out", str(target / "eval.json")]
        option = "--out"
    else:
        args = ["train", "--set", *tiny_overrides(target)]
        option = "'output_dir'"
    user_error(capsys, args, option, str(target), "is a file, not a folder")


# ------------------------------------------------------------------------ evaluate: the reference data
@pytest.mark.parametrize("extra, expected", [
    (["--split", "bogus"], ["split", "'bogus'", "('train', 'test')"]),
    (["--n-reference", "100000"], ["between 2 and the 64 images", "100000"]),
    (["--n-reference", "1"], ["n_reference must be >= 2", "1"]),
    (["--dataset", "fashion_mnist"], ["'fashion_mnist' has 1-channel images", "'shapes' (3 channels)"]),
    (["--guidance-scale", "inf"], ["guidance_scale must be a finite number >= 0", "inf"]),
])
def test_evaluate_checks_the_reference_before_sampling(run, tmp_path, capsys, no_compute, extra, expected):
    user_error(capsys, [*eval_args(run, tmp_path), *extra], *expected)
    assert not (tmp_path / "eval.json").exists()
    assert not list((tmp_path / "cache").glob("*.npz"))  # no reference statistics were computed either


def test_evaluate_against_another_dataset_gets_only_the_image_size(run, tmp_path, capsys, no_compute, monkeypatch):
    # cifar10 has the shapes' 3 channels; offline it is missing, said in one line (no num_samples TypeError).
    monkeypatch.setenv("DIFFUSION_OFFLINE", "1")
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path / "data"))
    user_error(capsys, [*eval_args(run, tmp_path), "--dataset", "cifar10"], "'cifar10' not found")


# ----------------------------------------------------------------------------------- starting noise
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_starting_noise_of_another_dtype_is_refused_by_name(dtype):
    from diffusion_lib.models import UNet, UNetConfig
    from diffusion_lib.samplers import classifier_free_guidance, ddim_sample

    model = UNet(UNetConfig.preset("cifar_small", base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                                   attention_levels=[1], num_groups=4, image_size=8, num_classes=4))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    guided = classifier_free_guidance(model, 2.0, 4)
    with pytest.raises(TypeError, match=rf"has dtype {dtype} but the model's weights are torch.float32"):
        ddim_sample(guided, NoiseSchedule.linear(50), x_T=torch.randn(2, 3, 8, 8).to(dtype), num_steps=2,
                    y=torch.tensor([0, 1]))
    assert not calls


# ------------------------------------------------------------------------------ the boundary itself
def test_internal_errors_keep_their_traceback(monkeypatch):
    def bug(args):
        return [][1]

    def foreign_value_error(args):
        return math.sqrt(-1)  # a ValueError, but raised outside diffusion_lib's own checks

    for run_function, error in ((bug, IndexError), (foreign_value_error, ValueError)):
        monkeypatch.setitem(cli.SUBCOMMANDS, "sample", cli.Subcommand("", lambda p: None, run_function))
        with pytest.raises(error):
            cli.main(["sample"])


def test_a_failed_download_is_reported_as_one_line(monkeypatch, capsys):
    from diffusion_lib.download import DownloadError

    def offline(args):
        raise DownloadError("https://example.org/weights.pt: not fetched, $DIFFUSION_OFFLINE is set")

    monkeypatch.setitem(cli.SUBCOMMANDS, "sample", cli.Subcommand("", lambda p: None, offline))
    user_error(capsys, ["sample"], "weights.pt: not fetched")
