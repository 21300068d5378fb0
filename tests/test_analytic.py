"""The closed-form denoisers of diffusion_lib.models.analytic against independent references:
Monte-Carlo posterior means, autograd scores, the schedule's conversions and the samplers."""

import math

import pytest
import torch

from diffusion_lib import NoiseSchedule, classifier_free_guidance, ddim_sample, ddpm_sample
from diffusion_lib.models.analytic import GaussianDenoiser, MixtureDenoiser

SCHEDULE = NoiseSchedule.linear(1000)
MIX = dict(weights=[0.5, 0.3, 0.2], means=[[1.5, 0.0], [-1.0, 1.0], [0.0, -2.0]],
           stds=[[0.3, 0.2], [0.5, 0.5], [0.1, 0.4]])  # diagonal variances


def mc_posterior_mean(x0_prior, x_t, alpha_bar):
    """E[x0 | x_t] by self-normalised importance sampling: x0 drawn from the prior, weighted by the
    likelihood N(x_t; √ᾱ x0, (1 − ᾱ) I). Independent of the closed form."""
    a, b2 = math.sqrt(alpha_bar), 1 - alpha_bar
    log_w = -0.5 * ((x_t[:, None, :] - a * x0_prior[None]) ** 2).sum(-1) / b2  # (N, M)
    return (log_w.softmax(1)[..., None] * x0_prior[None]).sum(1)


@pytest.mark.parametrize("t", [50, 300, 700])
def test_mixture_posterior_mean_matches_monte_carlo(t):
    model = MixtureDenoiser(SCHEDULE, **MIX)
    g = torch.Generator().manual_seed(t)
    prior = model.sample_data(100_000, g, dtype=torch.float64)
    x_t = SCHEDULE.q_sample(model.sample_data(8, g, dtype=torch.float64), torch.full((8,), t), generator=g)
    exact = model.posterior_mean(x_t, torch.full((8,), t))
    mc = mc_posterior_mean(prior, x_t, SCHEDULE.alpha_bar[t].item())
    torch.testing.assert_close(exact, mc, atol=0.02, rtol=0)


def test_gaussian_posterior_mean_matches_monte_carlo():
    model = GaussianDenoiser(SCHEDULE, mean=torch.tensor([0.3, -0.5]), std=torch.tensor([0.2, 0.7]))
    g = torch.Generator().manual_seed(0)
    prior = torch.tensor([0.3, -0.5]) + torch.tensor([0.2, 0.7]) * torch.randn(100_000, 2, generator=g, dtype=torch.float64)
    t = torch.full((6,), 400)
    x_t = torch.randn(6, 2, generator=g, dtype=torch.float64)
    mc = mc_posterior_mean(prior, x_t, SCHEDULE.alpha_bar[400].item())
    torch.testing.assert_close(model.posterior_mean(x_t, t), mc, atol=0.01, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_gaussian_equals_one_component_mixture(prediction_type):
    mean = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    std = torch.linspace(0.0, 1.5, 48, dtype=torch.float64).reshape(3, 4, 4)  # diagonal, a zero included
    gauss = GaussianDenoiser(SCHEDULE, mean, std, prediction_type)
    mix = MixtureDenoiser(SCHEDULE, [1.0], mean[None], std[None], prediction_type)
    x_t = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900, 999])
    torch.testing.assert_close(gauss(x_t, t), mix(x_t, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_predictions_agree_with_the_schedule_conversions(prediction_type):
    model = MixtureDenoiser(SCHEDULE, **MIX, prediction_type=prediction_type)
    x_t = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([0, 1, 99, 250, 600, 998, 999])
    out = model(x_t, t)
    x0 = model.posterior_mean(x_t, t)
    torch.testing.assert_close(SCHEDULE.predict_x0(x_t, t, out, prediction_type), x0)
    torch.testing.assert_close(SCHEDULE.predict_eps(x_t, t, out, prediction_type), model.predict(x_t, t, prediction_type="epsilon"))
    assert model.calls == 1


def test_score_is_the_gradient_of_log_prob_tweedie():
    model = MixtureDenoiser(SCHEDULE, **MIX)
    x_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 20, 200, 500, 800, 999])
    (grad,) = torch.autograd.grad(model.log_prob(x_t, t).sum(), x_t)
    torch.testing.assert_close(model.score(x_t.detach(), t), grad)
    # ε̂ = −b · score
    b = SCHEDULE.sqrt_one_minus_alpha_bar[t][:, None]
    torch.testing.assert_close(model.predict(x_t.detach(), t), -b * grad)


def test_log_prob_is_a_normalised_density():
    model = MixtureDenoiser(SCHEDULE, [0.7, 0.3], [[-1.0], [2.0]], [0.2, 0.5])
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None]
    for t in (0, 300, 999):
        density = model.log_prob(grid, torch.full((len(grid),), t)).exp()
        assert abs(torch.trapezoid(density, grid[:, 0]).item() - 1) < 1e-6


def test_the_optimal_eps_has_the_lowest_denoising_loss():
    """E[ε | x_t] minimises E‖ε − model(x_t)‖²: scaling or shifting it only increases the loss."""
    model = MixtureDenoiser(SCHEDULE, **MIX)
    g = torch.Generator().manual_seed(5)
    x0 = model.sample_data(50_000, g, dtype=torch.float64)
    t = torch.full((len(x0),), 300)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    pred = model(SCHEDULE.q_sample(x0, t, eps), t)
    best = ((pred - eps) ** 2).mean()
    for other in (1.05 * pred, 0.95 * pred, pred + 0.03):
        assert ((other - eps) ** 2).mean() > best


def test_class_conditional_mixture():
    model = MixtureDenoiser(SCHEDULE, **MIX, component_labels=[1, 0, 1])
    assert (model.num_classes, model.null_label) == (2, 2)
    class_1 = MixtureDenoiser(SCHEDULE, [0.5, 0.2], [MIX["means"][0], MIX["means"][2]], [MIX["stds"][0], MIX["stds"][2]])
    class_0 = MixtureDenoiser(SCHEDULE, [1.0], [MIX["means"][1]], [MIX["stds"][1]])
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.tensor([10, 200, 500, 900])
    torch.testing.assert_close(model(x_t, t, torch.ones(4, dtype=torch.long)), class_1(x_t, t))
    torch.testing.assert_close(model(x_t, t, 0), class_0(x_t, t))
    torch.testing.assert_close(model(x_t, t, torch.full((4,), 2)), model(x_t, t))  # null label
    mixed = model(x_t, t, torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(mixed[1], class_1(x_t, t)[1])
    torch.testing.assert_close(mixed[3], class_0(x_t, t)[3])
    # classifier-free guidance: w = 1 is the conditional model, w = 0 the unconditional one
    y = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(classifier_free_guidance(model, 1.0, model.null_label)(x_t, t, y), model(x_t, t, y))
    torch.testing.assert_close(classifier_free_guidance(model, 0.0, model.null_label)(x_t, t, y), model(x_t, t))
    _, labels = model.sample_data(1000, torch.Generator().manual_seed(7), y=0, return_labels=True)
    assert (labels == 0).all()


def test_ddpm_with_the_gaussian_denoiser_reproduces_the_data():
    model = GaussianDenoiser(SCHEDULE, 0.3, 0.2)
    x0 = ddpm_sample(model, SCHEDULE, shape=(5000, 1), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert x0.dtype == torch.float64
    assert abs(x0.mean().item() - 0.3) < 0.01 and abs(x0.std().item() - 0.2) < 0.01
    assert model.calls == SCHEDULE.num_timesteps


def test_ddim_with_the_mixture_denoiser_finds_the_components():
    model = MixtureDenoiser(SCHEDULE, **MIX)
    x0 = ddim_sample(model, SCHEDULE, shape=(4000, 2), generator=torch.Generator().manual_seed(9), num_steps=100)
    assert x0.dtype == torch.float32
    nearest = torch.cdist(x0.double(), model.means).argmin(1)
    freq = torch.bincount(nearest, minlength=3).double() / len(x0)
    torch.testing.assert_close(freq, model.weights, atol=0.03, rtol=0)


def test_zero_terminal_snr_with_v_prediction():
    schedule = NoiseSchedule.linear(100).rescale_zero_terminal_snr()
    with pytest.raises(ValueError, match="epsilon"):
        GaussianDenoiser(schedule, 0.3, 0.2)
    model = GaussianDenoiser(schedule, 0.3, 0.2, "v_prediction")
    x_t = torch.randn(3, 1, dtype=torch.float64)
    x0 = schedule.predict_x0(x_t, torch.full((3,), 99), model(x_t, torch.full((3,), 99)), "v_prediction")
    torch.testing.assert_close(x0, torch.full((3, 1), 0.3, dtype=torch.float64))  # pure noise: the prior mean


def test_dtypes_follow_the_input():
    model = MixtureDenoiser(SCHEDULE, **MIX)
    t = torch.tensor([5, 500])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert model(torch.zeros(2, 2, dtype=dtype), t).dtype == dtype


def test_bad_inputs_raise_clear_errors():
    model = MixtureDenoiser(SCHEDULE, **MIX)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 3), t)
    with pytest.raises(ValueError, match="null label"):
        model(torch.zeros(2, 2), t, torch.tensor([0, 4]))
    with pytest.raises(TypeError):
        model(torch.zeros(2, 2), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        model(torch.zeros(2, 2), torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="weights"):
        MixtureDenoiser(SCHEDULE, [1.0, -1.0], [[0.0], [1.0]], 0.1)
    with pytest.raises(ValueError, match="stds"):
        MixtureDenoiser(SCHEDULE, [1.0, 1.0], [[0.0], [1.0]], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="component_labels"):
        MixtureDenoiser(SCHEDULE, [1.0, 1.0], [[0.0], [1.0]], 0.1, component_labels=[0, 2])
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianDenoiser(SCHEDULE, 0.0, 1.0, "noise")
    with pytest.raises(ValueError, match="broadcast"):
        GaussianDenoiser(SCHEDULE, torch.zeros(3), 1.0)(torch.zeros(2, 2), t)
