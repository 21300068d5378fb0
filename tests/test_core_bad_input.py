"""Bad input to schedules and samplers raises ValueError/TypeError naming the argument."""

import pytest
import torch

from diffusion_lib import NoiseSchedule, ddim_invert, ddim_sample, ddpm_sample, dpm_solver_sample, make_timesteps, sample

S = NoiseSchedule.linear(100)
ZERO_SNR = S.rescale_zero_terminal_snr()


def zero_model(x, t, y=None):
    return torch.zeros_like(x)


@pytest.mark.parametrize("build", [
    lambda: NoiseSchedule.linear(0), lambda: NoiseSchedule.cosine(-5), lambda: NoiseSchedule.sigmoid(0),
    lambda: NoiseSchedule.from_name("linear", 0), lambda: NoiseSchedule.linear(10.5),
])
def test_num_timesteps_below_one(build):
    with pytest.raises(ValueError, match="num_timesteps"):
        build()


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, -0.1], [0.1, 1.5], [1.0, 0.5], [0.1, float("nan")]])
def test_betas_outside_0_1(betas):
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule.from_betas(betas)


def test_betas_shape_and_last_beta_one_allowed():
    for bad in ([], [[0.1, 0.2]]):
        with pytest.raises(ValueError, match="betas"):
            NoiseSchedule.from_betas(bad)
    assert NoiseSchedule.from_betas([0.1, 0.5, 1.0]).zero_terminal_snr


def test_linear_and_other_constructor_parameters():
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(10, beta_start=0.02, beta_end=0.01)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(10, beta_start=0.0)
    with pytest.raises(ValueError, match="max_beta"):
        NoiseSchedule.cosine(10, max_beta=1.5)
    with pytest.raises(ValueError, match="s must"):
        NoiseSchedule.cosine(10, s=-0.1)
    with pytest.raises(ValueError, match="tau"):
        NoiseSchedule.sigmoid(10, tau=0)
    with pytest.raises(ValueError, match="num_timesteps >= 2"):
        NoiseSchedule.linear(1).rescale_zero_terminal_snr()
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule.from_dict({"name": "linear"})


def test_unknown_names():
    with pytest.raises(ValueError, match="schedule name"):
        NoiseSchedule.from_name("quadratic")
    with pytest.raises(ValueError, match="spacing"):
        make_timesteps(100, 10, "uniform")
    with pytest.raises(ValueError, match="spacing"):
        ddim_sample(zero_model, S, shape=(2, 1), spacing="uniform")
    with pytest.raises(ValueError, match="spacing"):
        dpm_solver_sample(zero_model, S, shape=(2, 1), spacing="karras")
    with pytest.raises(ValueError, match="prediction_type"):
        S.check_prediction_type("eps")
    with pytest.raises(ValueError, match="prediction_type"):
        ddpm_sample(zero_model, S, shape=(2, 1), prediction_type="x0")
    with pytest.raises(ValueError, match="prediction_type"):
        S.training_target(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 1]), "score")
    with pytest.raises(ValueError, match="variance"):
        ddpm_sample(zero_model, S, shape=(2, 1), variance="learned")
    with pytest.raises(ValueError, match="sampler"):
        sample(zero_model, S, sampler="euler", shape=(2, 1))


@pytest.mark.parametrize("num_steps", [0, -3, 101, 2.5, True])
def test_num_steps_outside_1_T(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        make_timesteps(100, num_steps)
    for fn in (ddim_sample, dpm_solver_sample):
        with pytest.raises(ValueError, match="num_steps"):
            fn(zero_model, S, shape=(2, 1), num_steps=num_steps)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_invert(zero_model, S, torch.zeros(2, 1), num_steps=num_steps)


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf"), "1"])
def test_eta_negative(eta):
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(zero_model, S, shape=(2, 1), eta=eta)


def test_num_iterations_negative():
    with pytest.raises(ValueError, match="num_iterations"):
        ddim_invert(zero_model, S, torch.zeros(2, 1), num_iterations=-1)


@pytest.mark.parametrize("t", [-1, 100, torch.tensor([0, 100]), torch.tensor([-1, 5])])
def test_t_outside_range(t):
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 99\]"):
        S.q_sample(x0, t, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 99\]"):
        S.predict_x0(x0, t, x0)


def test_t_wrong_type_or_shape():
    x0 = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="t must be an int or an integer tensor"):
        S.q_sample(x0, torch.tensor([0.5, 1.0]), x0)
    with pytest.raises(TypeError, match="t must be"):
        S.q_sample(x0, 3.0, x0)
    with pytest.raises(ValueError, match=r"t must have shape \(N,\)"):
        S.q_sample(x0, torch.tensor([1, 2, 3]), x0)


def test_mismatched_shapes():
    x0, t = torch.zeros(2, 3), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="x0 and noise"):
        S.q_sample(x0, t, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x0 and x_t"):
        S.q_posterior_mean_variance(x0, torch.zeros(3, 3), t)
    with pytest.raises(ValueError, match="x_t and prediction"):
        S.predict_eps(x0, t, torch.zeros(2, 1), "sample")
    with pytest.raises(ValueError, match="x0 and eps"):
        S.v_target(x0, torch.zeros(1, 3), t)
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(zero_model, S, torch.zeros(2, 3), shape=(2, 4))
    with pytest.raises(ValueError, match="model must return a tensor of x_t's shape"):
        ddim_sample(lambda x, t: x[:1], S, shape=(2, 3))
    with pytest.raises(ValueError, match="y must be a tensor with one label per sample"):
        ddpm_sample(zero_model, S, shape=(2, 3), y=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="x_T"):
        dpm_solver_sample(zero_model, S)
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(zero_model, S, shape=(2, 0))
    with pytest.raises(TypeError, match="x_T"):
        ddim_sample(zero_model, S, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="x0"):
        ddim_invert(zero_model, S, [[0.0]])
    with pytest.raises(TypeError, match="schedule"):
        ddim_sample(zero_model, "linear", shape=(2, 3))
    with pytest.raises(TypeError, match="model"):
        ddim_sample(None, S, shape=(2, 3))


def test_epsilon_prediction_with_zero_terminal_snr():
    x0, t = torch.zeros(2, 3), torch.tensor([1, 99])
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        ZERO_SNR.check_prediction_type("epsilon")
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        ZERO_SNR.training_target(x0, x0, t, "epsilon")
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        ZERO_SNR.predict_x0(x0, t, x0, "epsilon")
    for name in ("ddpm", "ddim", "dpm_solver"):
        with pytest.raises(ValueError, match="zero-terminal-SNR"):
            sample(zero_model, ZERO_SNR, sampler=name, shape=(2, 3))
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        ddim_invert(zero_model, ZERO_SNR, x0)
