"""NoiseSchedule: constructors against their papers' formulas, the forward process and posterior
against Monte Carlo, and the ε/x0/v conversions."""

import json
import math

import numpy as np
import pytest
import torch

from diffusion_lib import PREDICTION_TYPES, NoiseSchedule

ARRAYS = ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "snr", "log_snr", "posterior_variance")


def test_linear_betas_are_the_linspace():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert torch.equal(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert torch.allclose(s.alpha_bar, torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))), rtol=0, atol=1e-14)
    report = NoiseSchedule.linear(1000, beta_start=0.0002, beta_end=0.02)  # the source report's Tables III-IV
    assert report.betas[0].item() == 0.0002
    for name in ARRAYS:
        arr = getattr(s, name)
        assert arr.dtype == torch.float64 and arr.shape == (1000,)
    assert s.num_timesteps == 1000 and not s.zero_terminal_snr


@pytest.mark.parametrize("T,s_off,max_beta", [(1000, 0.008, 0.999), (50, 0.008, 0.999), (1000, 0.0, 0.999), (200, 0.02, 0.5)])
def test_cosine_matches_nichol_dhariwal(T, s_off, max_beta):
    sched = NoiseSchedule.cosine(T, s=s_off, max_beta=max_beta)
    # Nichol & Dhariwal 2021 eq. 17, written independently in numpy
    f = np.cos(((np.arange(T + 1) / T + s_off) / (1 + s_off)) * np.pi / 2) ** 2
    abar_cont = f / f[0]
    betas = np.minimum(1 - abar_cont[1:] / abar_cont[:-1], max_beta)
    assert np.abs(sched.betas.numpy() - betas).max() < 1e-12
    assert np.abs(sched.alpha_bar.numpy() - np.cumprod(1 - betas)).max() < 1e-12
    assert (sched.betas <= max_beta).all()
    assert (sched.alpha_bar.diff() < 0).all()
    # where the clip does not bite, the product telescopes to f(t+1)/f(0)
    unclipped = betas < max_beta
    n = np.argmin(unclipped) if not unclipped.all() else T
    assert np.abs(sched.alpha_bar.numpy()[:n] - abar_cont[1 : n + 1]).max() < 1e-12


def test_cosine_without_offset_or_clip_ends_at_beta_one():
    """The report's pitfall: with s = 0 the last unclipped beta is 1; max_beta keeps it below."""
    s = NoiseSchedule.cosine(1000, s=0.0, max_beta=1.0)
    assert s.betas[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert NoiseSchedule.cosine(1000, s=0.0).betas[-1].item() == 0.999


def test_sigmoid_schedule():
    s = NoiseSchedule.sigmoid(1000)
    assert (s.alpha_bar.diff() < 0).all() and (s.betas <= 0.999).all() and (s.betas > 0).all()
    # Chen 2023, Alg. 1: continuous ᾱ at the midpoint t = 0.5 is exactly 1/2 for start = −end, τ = 1
    g = lambda u: (torch.sigmoid(torch.tensor(3.0)) - torch.sigmoid(torch.tensor(6.0 * u - 3))) / (
        torch.sigmoid(torch.tensor(3.0)) - torch.sigmoid(torch.tensor(-3.0)))
    assert s.alpha_bar[499].item() == pytest.approx(g(0.5).item(), abs=1e-6)


def test_from_name_and_from_betas():
    assert torch.equal(NoiseSchedule.from_name("cosine", 100).betas, NoiseSchedule.cosine(100).betas)
    assert torch.equal(NoiseSchedule.from_name("linear", 10, beta_end=0.1).betas, NoiseSchedule.linear(10, 1e-4, 0.1).betas)
    assert torch.equal(NoiseSchedule.from_betas([0.1, 0.2, 0.3]).alpha_bar,
                       torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7], dtype=torch.float64))


@pytest.mark.parametrize("base", [NoiseSchedule.linear(), NoiseSchedule.cosine(), NoiseSchedule.linear(50)])
def test_zero_terminal_snr(base):
    z = base.rescale_zero_terminal_snr()
    assert z.alpha_bar[-1].item() == 0.0 and z.betas[-1].item() == 1.0
    assert z.sqrt_alpha_bar[0].item() == base.sqrt_alpha_bar[0].item()
    assert z.zero_terminal_snr and z.log_snr[-1].item() == -math.inf
    assert (z.alpha_bar.diff() < 0).all()
    # Lin et al. 2023 Alg. 1: √ᾱ is an affine function of the original √ᾱ
    r = (base.sqrt_alpha_bar - base.sqrt_alpha_bar[-1]) / (base.sqrt_alpha_bar[0] - base.sqrt_alpha_bar[-1])
    assert torch.allclose(z.sqrt_alpha_bar / z.sqrt_alpha_bar[0], r, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="v_prediction"):
        z.check_prediction_type("epsilon")
    assert z.check_prediction_type("v_prediction") == "v_prediction"
    assert NoiseSchedule.from_dict(z.to_dict()).zero_terminal_snr


def test_to_dict_round_trip_is_exact_and_json_safe():
    for s in (NoiseSchedule.cosine(), NoiseSchedule.linear(1000, 2e-4, 0.02), NoiseSchedule.sigmoid(30)):
        d = json.loads(json.dumps(s.to_dict()))
        r = NoiseSchedule.from_dict(d)
        assert torch.equal(r.betas, s.betas) and r.name == s.name and r.params == s.params


def test_q_sample_marginal_monte_carlo():
    s = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([0.7, -0.4, 0.1, 0.9], dtype=torch.float64)
    for t in (0, 10, 300, 999):
        xs = s.q_sample(x0.expand(n, 4), torch.full((n,), t), generator=g)
        ab = s.alpha_bar[t].item()
        se_m = math.sqrt((1 - ab) / n)
        assert (xs.mean(0) - math.sqrt(ab) * x0).abs().max() < 4 * se_m
        se_v = (1 - ab) * math.sqrt(2 / (n - 1))
        assert (xs.var(0) - (1 - ab)).abs().max() < 4 * se_v


def test_q_sample_keeps_dtype_and_mixes_timesteps():
    s = NoiseSchedule.cosine()
    x0 = torch.randn(3, 1, 2, 2)
    noise = torch.randn(3, 1, 2, 2)
    t = torch.tensor([0, 500, 999])
    xt = s.q_sample(x0, t, noise)
    assert xt.dtype == torch.float32
    for i in range(3):
        ab = s.alpha_bar[t[i]].item()
        assert torch.allclose(xt[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i], atol=1e-6)
    assert torch.equal(s.q_sample(x0, 7, noise), s.q_sample(x0, torch.full((3,), 7), noise))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_mean_variance_monte_carlo(name):
    """Run the forward chain x0 → x_{t−1} → x_t; q(x_{t−1} | x_t, x0) is Gaussian with mean linear in x_t,
    so regressing x_{t−1} on x_t recovers the coefficients (DDPM eq. 7) and the residual variance β̃_t."""
    s = NoiseSchedule.from_name(name)
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0_val = 0.6
    for t in (1, 20, 500, 999):
        x0 = torch.full((n,), x0_val, dtype=torch.float64)
        x_prev = s.q_sample(x0, t - 1, generator=g)
        beta = s.betas[t].item()
        x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(n, generator=g, dtype=torch.float64)
        slope = ((x_t - x_t.mean()) * (x_prev - x_prev.mean())).mean() / x_t.var()
        intercept = x_prev.mean() - slope * x_t.mean()
        resid_var = (x_prev - intercept - slope * x_t).var().item()
        mean, var = s.q_posterior_mean_variance(x0[:1], torch.zeros(1, dtype=torch.float64), torch.tensor([t]))
        mean1, _ = s.q_posterior_mean_variance(x0[:1], torch.ones(1, dtype=torch.float64), torch.tensor([t]))
        exact_slope, exact_intercept = (mean1 - mean).item(), mean.item()
        se_slope = math.sqrt(resid_var / (n * x_t.var().item()))
        se_int = math.sqrt(resid_var / n * (1 + x_t.mean().item() ** 2 / x_t.var().item()))
        assert abs(slope.item() - exact_slope) < 4 * se_slope
        assert abs(intercept.item() - exact_intercept) < 4 * se_int
        assert abs(resid_var - var.item()) < 4 * var.item() * math.sqrt(2 / n)
    _, var0 = s.q_posterior_mean_variance(torch.ones(1), torch.ones(1), torch.tensor([0]))
    assert var0.item() == 0.0


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(), NoiseSchedule.cosine(),
                                      NoiseSchedule.linear().rescale_zero_terminal_snr()])
def test_prediction_conversions_round_trip(schedule):
    g = torch.Generator().manual_seed(2)
    n = 64
    x0 = torch.randn(n, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, schedule.num_timesteps - 1, (n,), generator=g)  # ᾱ > 0 for ε → x0
    x_t = schedule.q_sample(x0, t, eps)
    v = schedule.v_target(x0, eps, t)
    a = schedule.sqrt_alpha_bar[t][:, None]
    b = schedule.sqrt_one_minus_alpha_bar[t][:, None]
    assert torch.allclose(v, a * eps - b * x0, atol=1e-14)  # Salimans & Ho 2022, §4
    outputs = {"epsilon": eps, "sample": x0, "v_prediction": v}
    for ptype in PREDICTION_TYPES:
        if ptype == "epsilon" and schedule.zero_terminal_snr:
            continue
        target = schedule.training_target(x0, eps, t, ptype)
        assert torch.equal(target, outputs[ptype])
        assert torch.allclose(schedule.predict_x0(x_t, t, target, ptype), x0, atol=1e-9, rtol=0)
        assert torch.allclose(schedule.predict_eps(x_t, t, target, ptype), eps, atol=1e-9, rtol=0)
    # at ᾱ = 0 (zero terminal SNR) v recovers x0 exactly: x0 = −v
    if schedule.zero_terminal_snr:
        last = torch.full((n,), schedule.num_timesteps - 1)
        x_T = schedule.q_sample(x0, last, eps)
        assert torch.equal(x_T, eps)
        assert torch.allclose(schedule.predict_x0(x_T, last, schedule.v_target(x0, eps, last), "v_prediction"), x0)
