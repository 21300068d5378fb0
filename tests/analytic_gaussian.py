"""Exact reference for the sampler tests: data x0 ~ N(μ, σ²) per coordinate.

With x_t = a·x0 + b·ε (a = √ᾱ_t, b = √(1 − ᾱ_t)), x_t ~ N(aμ, a²σ² + b²) and the optimal (MMSE)
predictions are affine in x_t:
    E[ε | x_t]  = b (x_t − aμ) / (a²σ² + b²),
    E[x0 | x_t] = μ + aσ² (x_t − aμ) / (a²σ² + b²).
So every sampler step is an affine map of x_t plus independent Gaussian noise, and the exact mean
and variance of a sampler's output for the same discrete timesteps follow in closed form. The
propagation below is written from the papers' equations in plain float64 Python, independently
of the library's samplers; it uses only ᾱ (schedule.alpha_bar) and the timestep arrays.
"""

from __future__ import annotations

import math

import pytest
import torch


def eps_affine(ab: float, mu: float, sigma: float) -> tuple[float, float]:
    """(e0, e1) with E[ε | x_t] = e0 + e1·x_t."""
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    var = a * a * sigma * sigma + b * b
    return -b * a * mu / var, b / var


def x0_affine(ab: float, mu: float, sigma: float) -> tuple[float, float]:
    """(c0, c1) with E[x0 | x_t] = c0 + c1·x_t."""
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    var = a * a * sigma * sigma + b * b
    return mu * b * b / var, a * sigma * sigma / var


class GaussianDenoiser:
    """The optimal model for x0 ~ N(μ, σ²), returning ε, x0 or v as asked; counts its calls."""

    def __init__(self, schedule, mu: float, sigma: float, prediction_type: str = "epsilon"):
        ab = schedule.alpha_bar
        a, b = ab.sqrt(), (1 - ab).sqrt()
        var = a * a * sigma**2 + b * b
        e0, e1 = -b * a * mu / var, b / var  # E[ε | x_t] = e0 + e1·x_t
        c0, c1 = mu * b * b / var, a * sigma**2 / var  # E[x0 | x_t] = c0 + c1·x_t
        self.coefs = {"epsilon": (e0, e1), "sample": (c0, c1), "v_prediction": (a * e0 - b * c0, a * e1 - b * c1)}[prediction_type]
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        shape = (-1, *([1] * (x.ndim - 1)))
        k0, k1 = (c.to(x.dtype)[t].reshape(shape) for c in self.coefs)
        return k0 + k1 * x


class MixtureDenoiser:
    """The optimal ε-model for a mixture Σ_k π_k N(μ_k, s_k² I) in d dimensions (float64), for
    samplers, which call it with one timestep for the whole batch."""

    def __init__(self, schedule, weights, means, stds):
        self.ab = schedule.alpha_bar.tolist()
        self.log_w = torch.tensor(weights, dtype=torch.float64).log()
        self.means = torch.tensor(means, dtype=torch.float64)  # (K, d)
        self.stds = torch.tensor(stds, dtype=torch.float64)  # (K,)

    def __call__(self, x, t, y=None):
        assert (t == t[0]).all(), "MixtureDenoiser expects one timestep per batch"
        ab = self.ab[int(t[0])]
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        var = a * a * self.stds**2 + b * b  # (K,)
        diff = x[:, None, :] - a * self.means  # (N, K, d)
        log_p = self.log_w - 0.5 * (diff**2).sum(-1) / var - 0.5 * x.shape[1] * var.log()
        resp = log_p.softmax(dim=1)  # posterior component probabilities (N, K)
        return b * torch.einsum("nk,nkd->nd", resp / var, diff)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster on a shared, loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ddpm_moments(schedule, mu, sigma, variance="fixed_small"):
    """Exact output (mean, var) of ancestral sampling over all T steps, from x_T ~ N(0, 1), via
    x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t + σ_t z (Ho et al. 2020, eq. 11 / Algorithm 2)."""
    ab = schedule.alpha_bar.tolist()
    betas = schedule.betas.tolist()
    m, v = 0.0, 1.0
    for t in range(schedule.num_timesteps - 1, -1, -1):
        e0, e1 = eps_affine(ab[t], mu, sigma)
        k = betas[t] / math.sqrt(1 - ab[t])
        p, q = (1 - k * e1) / math.sqrt(1 - betas[t]), -k * e0 / math.sqrt(1 - betas[t])
        ab_prev = ab[t - 1] if t > 0 else 1.0
        s2 = 0.0 if t == 0 else (betas[t] * (1 - ab_prev) / (1 - ab[t]) if variance == "fixed_small" else betas[t])
        m, v = p * m + q, p * p * v + s2
    return m, v


def ddim_moments(schedule, timesteps, mu, sigma, eta, start=(0.0, 1.0)):
    """Exact output (mean, var) of DDIM over `timesteps` then to ᾱ = 1 (Song et al. 2021, eqs. 12, 16),
    from x_T with (mean, var) = start. With η = 0 and start = (x_T tensor, 0) the mean is the exact path."""
    ab_all = schedule.alpha_bar.tolist()
    ts = timesteps.tolist()
    m, v = start
    for i, t in enumerate(ts):
        ab_t = ab_all[t]
        ab_prev = ab_all[ts[i + 1]] if i + 1 < len(ts) else 1.0
        s = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
        c0, c1 = x0_affine(ab_t, mu, sigma)
        e0, e1 = eps_affine(ab_t, mu, sigma)
        k_x0, k_eps = math.sqrt(ab_prev), math.sqrt(1 - ab_prev - s * s)
        p, q = k_x0 * c1 + k_eps * e1, k_x0 * c0 + k_eps * e0
        m, v = p * m + q, p * p * v + s * s
    return m, v


def dpm_solver_2m_moments(schedule, timesteps, mu, sigma, start=(0.0, 1.0)):
    """Exact output (mean, var) of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) over `timesteps`,
    with a first-order final step to σ = 0, from x_T with (mean, var) = start. Deterministic: the
    output is A·x_T + B, so start = (x_T tensor, 0) gives the exact path."""
    ab = [schedule.alpha_bar[t].item() for t in timesteps.tolist()]
    alpha = [math.sqrt(a) for a in ab]
    sig = [math.sqrt(1 - a) for a in ab]
    lam = [math.log(al / s) if al > 0 else -math.inf for al, s in zip(alpha, sig)]
    A, B = 1.0, 0.0  # x = A·x_T + B
    prev = None  # x̂0 at the previous step, as (A, B)
    n = len(ab)
    for i in range(n):
        c0, c1 = x0_affine(ab[i], mu, sigma)
        d = (c1 * A, c1 * B + c0)  # x̂0_i as an affine function of x_T
        if i == n - 1:
            A, B = d
            break
        h = lam[i + 1] - lam[i]
        if prev is None:
            D = d
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = tuple((1 + 1 / (2 * r)) * di - 1 / (2 * r) * pi for di, pi in zip(d, prev))
        ratio = sig[i + 1] / sig[i]
        coef = -alpha[i + 1] * (math.exp(-h) - 1)
        A, B = ratio * A + coef * D[0], ratio * B + coef * D[1]
        prev = d
    return A * start[0] + B, A * A * start[1]


def assert_moments(x: torch.Tensor, mean: float, var: float, n_se: float = 4.0):
    """Sample mean and variance of all entries of x within n_se Monte-Carlo standard errors."""
    x = x.double().flatten()
    n = x.numel()
    m_hat, v_hat = x.mean().item(), x.var().item()
    se_m, se_v = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    assert abs(m_hat - mean) < n_se * se_m, f"mean {m_hat:.6f} vs exact {mean:.6f} (4 SE = {n_se * se_m:.2e})"
    assert abs(v_hat - var) < n_se * se_v, f"var {v_hat:.6f} vs exact {var:.6f} (4 SE = {n_se * se_v:.2e})"
