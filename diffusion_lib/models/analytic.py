"""Closed-form optimal denoisers: what a perfectly trained network would output.

When the data distribution is Gaussian, or a mixture of Gaussians, the best possible denoiser is
known exactly. The course uses it as a reference (a trained network should approach it), in tests
(a sampler driven by it must reproduce the data distribution up to its own discretisation error),
and to demonstrate guidance without training anything.

Derivation. The forward process gives x_t = a·x0 + b·ε with a = √ᾱ_t, b = √(1 − ᾱ_t) and
ε ~ N(0, I) independent of x0 (Ho et al. 2020, eq. 4). The loss ‖target − model(x_t, t)‖² is
minimised, for every x_t, by the conditional mean of the target, so the optimal predictions are

    x̂0(x_t) = E[x0 | x_t],    ε̂(x_t) = E[ε | x_t] = (x_t − a·x̂0)/b,    v̂ = a·ε̂ − b·x̂0,

the last two because ε and v are affine in (x_t, x0) given t. Tweedie's formula ties the same
quantity to the score of the noisy marginal q_t(x_t):

    ∇ log q_t(x_t) = (a·E[x0 | x_t] − x_t) / b² = −E[ε | x_t] / b.

Everything therefore reduces to E[x0 | x_t], which is Gaussian conditioning:

* x0 ~ N(μ, diag(s²)) (per coordinate, independent): (x0, x_t) are jointly Gaussian with
  Var(x_t) = a²s² + b² and Cov(x0, x_t) = a·s², so

      E[x0 | x_t] = μ + a·s² / (a²s² + b²) · (x_t − a·μ).

* x0 ~ Σ_k π_k N(μ_k, diag(s_k²)): given the component k the line above holds with (μ_k, s_k²);
  the component itself has posterior probability (its "responsibility")

      r_k(x_t) = π_k N(x_t; a·μ_k, diag(a²s_k² + b²)) / Σ_j π_j N(x_t; a·μ_j, diag(a²s_j² + b²)),

  and E[x0 | x_t] = Σ_k r_k(x_t) · E[x0 | x_t, k].

* Class-conditional mixture: each component k carries a class label c_k. Conditioning on y = c
  keeps the components of class c with their weights renormalised, so the same formulas apply
  with π_k replaced by π_k·1[c_k = c] / Σ_j π_j·1[c_j = c]. The null label (num_classes, as for
  the UNet) gives the full mixture, which is what a network trained with label dropout learns
  for "no label" (Ho & Salimans 2022); :func:`~diffusion_lib.samplers.classifier_free_guidance`
  can wrap the result directly.

Every model here is a callable ``model(x_t, t, y=None)`` with integer timesteps t of shape (N,),
computing in x_t's dtype (float32 or float64; half precisions are computed in float32), so every
sampler can use it. ``calls`` counts the evaluations (network function evaluations, NFE).
"""

from __future__ import annotations

import math

import torch

from ..schedules import PREDICTION_TYPES, FlowPath, NoiseSchedule
from .layers import check_labels

__all__ = ["AnalyticDenoiser", "FlowVelocity", "GaussianDenoiser", "MixtureDenoiser"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class AnalyticDenoiser:
    """Shared part of the closed-form denoisers: x̂0 → ε̂, v̂ or the score, and input checks.

    Subclasses implement ``_x0``: E[x0 | x_t] (given a label y where the data has classes) on prepared
    inputs; everything else follows from it.
    """

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.prediction_type = schedule.check_prediction_type(prediction_type)
        self.calls = 0

    # --------------------------------------------------------------------- helpers
    def _prepare(self, x_t, t):
        """(x_t in the compute dtype, t as long (N,), a and b shaped to broadcast against x_t)."""
        if not isinstance(x_t, torch.Tensor) or not x_t.dtype.is_floating_point or x_t.ndim < 1:
            raise TypeError("x_t must be a floating-point tensor of shape (N, ...)")
        t = self.schedule.check_timesteps(t, x_t.shape[0])
        x = x_t.to(_compute_dtype(x_t))
        alpha_bar = self.schedule.alpha_bar.to(device=x.device, dtype=x.dtype)[t.to(x.device)]
        alpha_bar = alpha_bar.reshape(-1, *([1] * (x.ndim - 1)))
        return x, t, alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def _x0(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y) -> torch.Tensor:
        """E[x0 | x_t] for prepared inputs (x in the compute dtype, a and b broadcasting)."""
        raise NotImplementedError

    def posterior_mean(self, x_t: torch.Tensor, t, y=None) -> torch.Tensor:
        """E[x0 | x_t] (given the label y where the model has classes), in x_t's dtype."""
        x, _, a, b = self._prepare(x_t, t)
        return self._x0(x, a, b, y).to(x_t.dtype)

    # --------------------------------------------------------------------- predictions
    def predict(self, x_t: torch.Tensor, t, y=None, prediction_type: str | None = None) -> torch.Tensor:
        """The optimal output for ``prediction_type`` (default: the model's own):
        "epsilon" E[ε | x_t], "sample" E[x0 | x_t] or "v_prediction" E[v | x_t]."""
        prediction_type = self.prediction_type if prediction_type is None else prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        x, _, a, b = self._prepare(x_t, t)
        x0 = self._x0(x, a, b, y)
        if prediction_type == "sample":
            out = x0
        else:
            eps = (x - a * x0) / b
            out = eps if prediction_type == "epsilon" else a * eps - b * x0
        return out.to(x_t.dtype)

    def __call__(self, x_t: torch.Tensor, t, y=None) -> torch.Tensor:
        self.calls += 1
        return self.predict(x_t, t, y)

    def score(self, x_t: torch.Tensor, t, y=None) -> torch.Tensor:
        """∇ log q_t(x_t) = (a·E[x0 | x_t] − x_t)/b² (Tweedie's formula)."""
        x, _, a, b = self._prepare(x_t, t)
        return ((a * self._x0(x, a, b, y) - x) / b**2).to(x_t.dtype)


class GaussianDenoiser(AnalyticDenoiser):
    """The optimal denoiser for data x0 ~ N(mean, diag(std²)), independent coordinates.

    ``mean`` and ``std`` are numbers or tensors that broadcast against one sample (x_t.shape[1:]),
    e.g. a scalar, a (d,) vector or a (C, H, W) image; std = 0 is a point mass at ``mean``.

        E[x0 | x_t] = μ + a·s² / (a²s² + b²) · (x_t − a·μ)      (a = √ᾱ_t, b = √(1 − ᾱ_t))

    It is affine in x_t, so the exact output distribution of any sampler driven by it can be
    propagated in closed form. ``y`` is accepted and ignored (the data has no classes).
    """

    def __init__(self, schedule: NoiseSchedule, mean=0.0, std=1.0, prediction_type: str = "epsilon"):
        super().__init__(schedule, prediction_type)
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if not torch.isfinite(self.mean).all():
            raise ValueError("mean must be finite")
        if not torch.isfinite(self.std).all() or (self.std < 0).any():
            raise ValueError("std must be finite and >= 0")

    def _x0(self, x, a, b, y):
        mu = self.mean.to(device=x.device, dtype=x.dtype)
        var = self.std.to(device=x.device, dtype=x.dtype) ** 2
        try:
            x0 = mu + a * var / (a**2 * var + b**2) * (x - a * mu)
        except RuntimeError as error:
            raise ValueError(f"mean {tuple(mu.shape)} and std {tuple(var.shape)} must broadcast against one "
                             f"sample of x_t, shape {tuple(x.shape[1:])}") from error
        if x0.shape != x.shape:
            raise ValueError(f"mean {tuple(mu.shape)} and std {tuple(var.shape)} must broadcast against one "
                             f"sample of x_t, shape {tuple(x.shape[1:])}")
        return x0


class MixtureDenoiser(AnalyticDenoiser):
    """The optimal denoiser for a Gaussian mixture x0 ~ Σ_k π_k N(μ_k, diag(s_k²)), optionally
    class-conditional.

    Args:
        schedule: the NoiseSchedule.
        weights: (K,) positive mixture weights π_k (normalised here).
        means: (K, *event_shape) component means, e.g. (K, 2) for 2-D points; x_t must then have
            shape (N, *event_shape).
        stds: the component standard deviations: a number (shared), (K,) (isotropic per component)
            or (K, *event_shape) (diagonal); zeros allowed (point masses, e.g. an empirical
            distribution of training points).
        prediction_type: what ``model(x_t, t, y)`` returns: "epsilon", "sample" or "v_prediction".
        component_labels: (K,) class label c_k of each component, covering 0..num_classes−1;
            default: each component is its own class (c_k = k).

    ``num_classes`` and ``null_label`` (= num_classes) follow the UNet's convention: y of shape
    (N,) with values in [0, num_classes − 1] conditions on that class, the null label (or y=None)
    gives the full mixture.
    """

    def __init__(self, schedule: NoiseSchedule, weights, means, stds, prediction_type: str = "epsilon", *,
                 component_labels=None):
        super().__init__(schedule, prediction_type)
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape), e.g. (K, d); got {tuple(means.shape)}")
        K = means.shape[0]
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},) (one per component), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError("weights must be finite and > 0")
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1 and stds.shape == (K,):
            stds = stds.reshape(K, *([1] * (means.ndim - 1)))
        try:
            stds = torch.broadcast_to(stds, means.shape)
        except RuntimeError as error:
            raise ValueError(f"stds must be a number, shape ({K},) or the means' shape {tuple(means.shape)}; "
                             f"got {tuple(stds.shape)}") from error
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        if not torch.isfinite(stds).all() or (stds < 0).any():
            raise ValueError("stds must be finite and >= 0")
        if component_labels is None:
            component_labels = torch.arange(K)
        component_labels = torch.as_tensor(component_labels)
        if component_labels.shape != (K,) or component_labels.dtype.is_floating_point:
            raise ValueError(f"component_labels must be {K} integer class labels, got {component_labels!r}")
        component_labels = component_labels.long()
        num_classes = int(component_labels.max()) + 1
        if int(component_labels.min()) < 0 or len(component_labels.unique()) != num_classes:
            raise ValueError("component_labels must cover every class 0..num_classes-1 (each class needs "
                             f"a component), got {component_labels.tolist()}")
        self.event_shape = tuple(means.shape[1:])
        self.weights = weights / weights.sum()
        self.means = means.reshape(K, -1)  # (K, d)
        self.variances = stds.reshape(K, -1) ** 2  # (K, d)
        self.component_labels = component_labels
        self.num_classes = num_classes
        self.null_label = num_classes

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # --------------------------------------------------------------------- conditioning
    def _log_weights(self, y, n: int, device, dtype) -> torch.Tensor:
        """log π_k per sample, shape (n, K): the full mixture, or restricted to class y."""
        log_w = self.weights.to(device=device, dtype=dtype).log().expand(n, -1)
        if y is None:
            return log_w
        y = check_labels(y, n, self.num_classes, device)
        labels = self.component_labels.to(device)
        keep = (labels[None, :] == y[:, None]) | (y[:, None] == self.null_label)
        log_w = torch.where(keep, log_w, torch.full_like(log_w, -math.inf))
        return log_w - torch.logsumexp(log_w, dim=1, keepdim=True)  # renormalised within the class

    def _log_joint(self, x, a, b, y):
        """log π_k + log N(x_t; a·μ_k, diag(a²s_k² + b²)), shape (N, K), and the pieces
        E[x0 | x_t, k] needs: x_t − a·μ_k and Var(x_t | k), both (N, K, d)."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x_t must have shape (N, {', '.join(map(str, self.event_shape))}) to match the "
                             f"means, got {tuple(x.shape)}")
        n = x.shape[0]
        x = x.reshape(n, 1, -1)  # (N, 1, d)
        a, b = a.reshape(n, 1, 1), b.reshape(n, 1, 1)
        var = a**2 * self.variances.to(device=x.device, dtype=x.dtype) + b**2  # (N, K, d)
        diff = x - a * self.means.to(device=x.device, dtype=x.dtype)  # (N, K, d)
        log_normal = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)  # (N, K)
        return self._log_weights(y, n, x.device, x.dtype) + log_normal, diff, var

    def responsibilities(self, x_t: torch.Tensor, t, y=None) -> torch.Tensor:
        """r_k(x_t) = P(component k | x_t) (given y), shape (N, K), rows summing to 1."""
        x, _, a, b = self._prepare(x_t, t)
        return self._log_joint(x, a, b, y)[0].softmax(dim=1).to(x_t.dtype)

    def log_prob(self, x_t: torch.Tensor, t, y=None) -> torch.Tensor:
        """log q_t(x_t) (or log q_t(x_t | y)), the density of the noisy marginal, shape (N,)."""
        x, _, a, b = self._prepare(x_t, t)
        return torch.logsumexp(self._log_joint(x, a, b, y)[0], dim=1).to(x_t.dtype)

    def _x0(self, x, a, b, y):
        log_joint, diff, var = self._log_joint(x, a, b, y)
        r = log_joint.softmax(dim=1)[..., None]  # (N, K, 1)
        n = x.shape[0]
        s2 = self.variances.to(device=x.device, dtype=x.dtype)
        x0_given_k = self.means.to(device=x.device, dtype=x.dtype) + a.reshape(n, 1, 1) * s2 / var * diff
        return (r * x0_given_k).sum(1).reshape(x.shape)

    # --------------------------------------------------------------------- data
    def sample_data(self, n: int, generator: torch.Generator | None = None, y=None, *,
                    return_labels: bool = False, dtype: torch.dtype = torch.float32):
        """n draws of x0 from the mixture (or from class y: an int or (n,) labels), shape
        (n, *event_shape); with return_labels also the (n,) class labels."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        probs = self._log_weights(y, n, torch.device("cpu"), torch.float64).exp()
        k = torch.multinomial(probs, 1, generator=generator)[:, 0]
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x0 = self.means[k] + self.variances[k].sqrt() * z
        x0 = x0.reshape(n, *self.event_shape).to(dtype)
        return (x0, self.component_labels[k]) if return_labels else x0


class FlowVelocity:
    """The optimal flow-matching model: the marginal velocity u(x_t, t) = E[ε − x0 | x_t] on the path
    x_t = (1 − t)·x0 + t·ε of ``path`` (a FlowPath), for the Gaussian or mixture data of ``data`` (a
    GaussianDenoiser or MixtureDenoiser, whose schedule is not used).

    Derivation. With a = 1 − t, b = t and, given the component k, x0 ~ N(μ_k, diag(s_k²)): per coordinate
    Cov(ε − x0, x_t) = b − a·s_k² and Var(x_t) = a²s_k² + b², so by Gaussian conditioning

        E[ε − x0 | x_t, k] = −μ_k + (b − a·s_k²)/(a²s_k² + b²) · (x_t − a·μ_k),

    and u = Σ_k r_k(x_t)·E[ε − x0 | x_t, k] with the responsibilities r_k at (a, b) (see the module
    docstring). It is the minimiser of the flow-matching loss (Lipman et al. 2023, Theorem 2), finite at
    t = 0 where every s_k > 0 (there u = −x_t, as ε is independent of x0; point masses need t > 0).

    ``model(x_t, time, y=None)`` takes the network time t·(T − 1) (what the flow samplers pass) and
    counts its calls in ``calls``; :meth:`velocity` takes t ∈ [0, 1] directly.
    """

    def __init__(self, data: AnalyticDenoiser, path: FlowPath):
        if not isinstance(data, (GaussianDenoiser, MixtureDenoiser)):
            raise TypeError(f"data must be a GaussianDenoiser or MixtureDenoiser (the data distribution), got "
                            f"{type(data).__name__}")
        if not isinstance(path, FlowPath):
            raise TypeError(f"path must be a FlowPath, got {type(path).__name__}")
        self.data, self.path = data, path
        self.num_classes = getattr(data, "num_classes", None)
        self.null_label = getattr(data, "null_label", None)
        self.calls = 0

    def velocity(self, x_t: torch.Tensor, t, y=None) -> torch.Tensor:
        """E[ε − x0 | x_t] at times t ∈ [0, 1] (a float or (N,)), in x_t's dtype."""
        if not isinstance(x_t, torch.Tensor) or not x_t.dtype.is_floating_point or x_t.ndim < 1:
            raise TypeError("x_t must be a floating-point tensor of shape (N, ...)")
        x = x_t.to(_compute_dtype(x_t))
        a, b, _, _ = self.path.coefficients(t, x)
        if isinstance(self.data, GaussianDenoiser):
            mu = self.data.mean.to(device=x.device, dtype=x.dtype)
            var = self.data.std.to(device=x.device, dtype=x.dtype) ** 2
            u = -mu + (b - a * var) / (a**2 * var + b**2) * (x - a * mu)
            if u.shape != x.shape:
                raise ValueError(f"mean {tuple(mu.shape)} and std {tuple(var.shape)} must broadcast against one "
                                 f"sample of x_t, shape {tuple(x.shape[1:])}")
            return u.to(x_t.dtype)
        log_joint, diff, var = self.data._log_joint(x, a, b, y)  # diff = x_t − a·μ_k, var = a²s_k² + b²: (N, K, d)
        n = x.shape[0]
        a, b = a.reshape(n, 1, 1), b.reshape(n, 1, 1)
        s2 = self.data.variances.to(device=x.device, dtype=x.dtype)
        u_given_k = -self.data.means.to(device=x.device, dtype=x.dtype) + (b - a * s2) / var * diff
        return (log_joint.softmax(dim=1)[..., None] * u_given_k).sum(1).reshape(x.shape).to(x_t.dtype)

    def __call__(self, x_t: torch.Tensor, time: torch.Tensor, y=None) -> torch.Tensor:
        self.calls += 1
        return self.velocity(x_t, (time / (self.path.num_timesteps - 1)).clamp(0, 1), y)  # clamp: round-off
