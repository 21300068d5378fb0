"""Noise schedules and the closed-form formulas of the forward process.

Notation follows Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", DDPM):
β_t is the variance added at step t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, and

    q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I)                      (DDPM eq. 4)

Timesteps are integer indices 0..T−1 into the arrays below (index 0 is the first, least noisy
step). Every array is computed once in float64 and cast to the dtype/device of the tensors it is
applied to, so a float32 model never sees a schedule rounded to float32 before the cumulative
product.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# What a network can predict at x_t = a·x0 + b·ε: the three training targets, the score and the flow velocity.
PARAMETERISATIONS = (*PREDICTION_TYPES, "score", "velocity")
SCHEDULE_NAMES = ("linear", "cosine", "sigmoid")


def split_prediction(x_t: torch.Tensor, prediction: torch.Tensor, a, b, prediction_type: str,
                     need_eps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x0, ε) from a network output at x_t = a·x0 + b·ε, a = √ᾱ_t, b = √(1 − ᾱ_t): the one conversion
    between the three parameterisations. ε is None unless ``need_eps``.

    ε-prediction: x0 = (x_t − b·ε)/a (Ho et al. 2020, eq. 15); x0-prediction: ε = (x_t − a·x0)/b;
    v = a·ε − b·x0: x0 = a·x_t − b·v, ε = b·x_t + a·v (Salimans & Ho 2022, §4).
    a, b are floats in the samplers (one timestep per batch: computed in place, no temporaries) and
    per-sample tensors that broadcast in :meth:`NoiseSchedule.predict_x0` / ``predict_eps``.
    """
    scalar = not isinstance(a, torch.Tensor)
    if prediction_type == "epsilon":
        x0 = torch.add(x_t, prediction, alpha=-b).mul_(1.0 / a) if scalar else (x_t - b * prediction) / a
        return x0, prediction
    if prediction_type == "sample":
        if not need_eps:
            return prediction, None
        return prediction, (torch.add(x_t, prediction, alpha=-a).mul_(1.0 / b) if scalar
                            else (x_t - a * prediction) / b)
    x0 = torch.mul(x_t, a).sub_(prediction, alpha=b) if scalar else a * x_t - b * prediction
    if not need_eps:
        return x0, None
    return x0, torch.mul(x_t, b).add_(prediction, alpha=a) if scalar else b * x_t + a * prediction


def _any_zero(x) -> bool:
    return bool((x == 0).any()) if isinstance(x, torch.Tensor) else x == 0


def convert_prediction(x_t: torch.Tensor, prediction: torch.Tensor, from_type: str, to_type: str, a, b,
                       da=None, db=None) -> torch.Tensor:
    """Convert a prediction at x_t = a·x0 + b·ε from one parameterisation to another.

    The five parameterisations are all linear in the two unknowns (x0, ε):

        "epsilon"       ε
        "sample"        x0
        "v_prediction"  v = a·ε − b·x0            Salimans & Ho 2022, §4 (written for any a, b)
        "score"         ∇ log p_t(x_t) = −ε/b     x_t | x0 ~ N(a·x0, b²I); for the optimal ε̂ = E[ε | x_t] it is
                                                  the noisy marginal's score (Tweedie's formula)
        "velocity"      u = ȧ·x0 + ḃ·ε = dx_t/dt  the path's conditional vector field (Lipman et al. 2023,
                                                  Theorem 3); da = ȧ, db = ḃ are its time derivatives

    so a prediction p = c_x0·x0 + c_ε·ε and x_t = a·x0 + b·ε form a 2×2 linear system with
    determinant D = a·c_ε − b·c_x0, whose solution is x0 = (c_ε·x_t − b·p)/D, ε = (a·p − c_x0·x_t)/D;
    the output is then formed from x0 and ε. The score enters and leaves through ε = −b·score.
    On the flow path (a = 1 − t, b = t, ȧ = −1, ḃ = 1) the velocity gives x0 = x_t − t·u and
    ε = x_t + (1 − t)·u; on a variance-preserving schedule (a² + b² = 1) v gives x0 = a·x_t − b·v.

    ``a``, ``b`` (and ``da``, ``db``, needed only when either type is "velocity") are floats or
    tensors that broadcast against x_t. A conversion that the path does not determine raises
    ValueError: ε → x0 where a = 0 (pure noise), x0 → ε or to the score where b = 0 (clean data).
    """
    for name, kind in (("from_type", from_type), ("to_type", to_type)):
        if kind not in PARAMETERISATIONS:
            raise ValueError(f"{name} must be one of {PARAMETERISATIONS}, got {kind!r}")
    NoiseSchedule._check_same_shape("x_t", x_t, "prediction", prediction)
    if "velocity" in (from_type, to_type) and (da is None or db is None):
        raise ValueError("converting to or from 'velocity' needs the path's time derivatives da = ȧ_t and db = ḃ_t "
                         f"(x_t = a·x0 + b·ε, u = ȧ·x0 + ḃ·ε); got da={da!r}, db={db!r}")
    if from_type == to_type:
        return prediction
    if from_type == "score":
        if to_type == "epsilon":
            return -b * prediction
        prediction, from_type = -b * prediction, "epsilon"
    if from_type == "epsilon" and to_type == "score":
        return _score_from_eps(prediction, b)
    coefficients = {"epsilon": (0.0, 1.0), "sample": (1.0, 0.0), "v_prediction": (-b, a), "velocity": (da, db)}
    c_x0, c_eps = coefficients[from_type]
    det = a * c_eps - b * c_x0
    if _any_zero(det):
        where = {"epsilon": "a = 0 (pure noise: ε is x_t itself and says nothing of x0)",
                 "sample": "b = 0 (clean data: x0 is x_t itself and says nothing of ε)"}
        raise ValueError(f"a {from_type!r} prediction does not determine x0 and ε where "
                         f"{where.get(from_type, 'a·c_ε − b·c_x0 = 0 (the 2×2 system is singular)')}; "
                         f"convert at another time, or from another parameterisation")
    x0 = (c_eps * x_t - b * prediction) / det
    eps = (a * prediction - c_x0 * x_t) / det
    if to_type == "epsilon":
        return eps
    if to_type == "sample":
        return x0
    if to_type == "v_prediction":
        return a * eps - b * x0
    if to_type == "velocity":
        return da * x0 + db * eps
    return _score_from_eps(eps, b)


def _score_from_eps(eps: torch.Tensor, b) -> torch.Tensor:
    if _any_zero(b):
        raise ValueError("the score −ε/b is undefined where b = 0 (no noise: the data distribution itself)")
    return -eps / b


def _betas_from_alpha_bar_fn(
    alpha_bar_fn: Callable[[torch.Tensor], torch.Tensor], num_timesteps: int, max_beta: float
) -> torch.Tensor:
    """β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta) on the grid t/T (Nichol & Dhariwal 2021, §3.2)."""
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = alpha_bar_fn(grid)
    return torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta)


def _check_num_timesteps(num_timesteps) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
    return num_timesteps


def _check_max_beta(max_beta) -> float:
    if not 0.0 < float(max_beta) <= 1.0:
        raise ValueError(f"max_beta must be in (0, 1], got {max_beta!r}")
    return float(max_beta)


class NoiseSchedule:
    """A discrete variance schedule β_1..β_T and everything derived from it.

    Attributes (float64 tensors of shape (T,), index t = timestep t):
        betas, alphas, alpha_bar, alpha_bar_prev (ᾱ_{t−1}, with ᾱ_{−1} = 1),
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar,
        snr = ᾱ/(1 − ᾱ) (Kingma et al. 2021), log_snr,
        posterior_variance β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t (DDPM eq. 7, "fixed_small"),
        posterior_mean_coef_x0, posterior_mean_coef_xt (DDPM eq. 7).
    num_timesteps (T) and zero_terminal_snr (ᾱ_{T−1} == 0) are plain Python values.

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`sigmoid`, :meth:`from_name` or
    :meth:`from_betas`; :meth:`to_dict` / :meth:`from_dict` store it in a checkpoint.
    """

    def __init__(self, betas, *, name: str = "custom", params: dict | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D sequence with at least 1 entry, got shape {tuple(betas.shape)}")
        bad = (~torch.isfinite(betas) | (betas <= 0) | (betas > 1)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"betas must all lie in (0, 1], got betas[{i}] = {betas[i].item()!r} "
                             f"({len(bad)} of {betas.numel()} outside)")
        ones = (betas[:-1] == 1).nonzero().flatten()
        if len(ones):
            raise ValueError(f"betas may equal 1 only as the last entry (zero terminal SNR), got betas[{int(ones[0])}] "
                             f"= 1.0 of {betas.numel()}: an earlier beta of 1 erases the signal before the last step")
        self.name = name
        self.params = dict(params or {})
        self.num_timesteps = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.zero_terminal_snr = bool(self.alpha_bar[-1] == 0)
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)
        self.log_snr = self.snr.log()
        # DDPM eq. 7: q(x_{t-1} | x_t, x_0) = N(coef_x0·x_0 + coef_xt·x_t, β̃_t I)
        one_minus = 1.0 - self.alpha_bar
        self.posterior_variance = self.betas * (1.0 - self.alpha_bar_prev) / one_minus
        self.posterior_mean_coef_x0 = self.betas * self.alpha_bar_prev.sqrt() / one_minus
        self.posterior_mean_coef_xt = (1.0 - self.alpha_bar_prev) * self.alphas.sqrt() / one_minus
        self._cache: dict = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        """A schedule from any sequence of betas in (0, 1] (a 1 only as the last entry)."""
        return cls(betas)

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """β linearly spaced from beta_start to beta_end (Ho et al. 2020, §4: 1e-4 → 0.02 for T = 1000).

        The course's source report uses beta_start = 0.0002 (its Tables III and IV).
        """
        _check_num_timesteps(num_timesteps)
        if not 0.0 < beta_start <= beta_end <= 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end <= 1, got beta_start={beta_start!r}, beta_end={beta_end!r}")
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(betas, name="linear", params=dict(beta_start=beta_start, beta_end=beta_end))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Cosine schedule (Nichol & Dhariwal 2021, eq. 17).

        ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T + s)/(1 + s)) · π/2), and
        β_t = 1 − ᾱ(t)/ᾱ(t−1) clipped at max_beta; the clip keeps the last β below 1 (without the
        offset s or the clip the last β is exactly 1). ``alpha_bar`` is the cumulative product of
        the clipped betas, so it departs from f(t)/f(0) only where the clip bites.
        """
        _check_num_timesteps(num_timesteps)
        if not s >= 0:
            raise ValueError(f"s must be >= 0, got {s!r}")
        max_beta = _check_max_beta(max_beta)

        def f(u):
            return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = _betas_from_alpha_bar_fn(lambda u: f(u) / f(torch.zeros(())), num_timesteps, max_beta)
        return cls(betas, name="cosine", params=dict(s=s, max_beta=max_beta))

    @classmethod
    def sigmoid(cls, num_timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                max_beta: float = 0.999) -> "NoiseSchedule":
        """Sigmoid schedule (Chen 2023, "On the Importance of Noise Scheduling", Algorithm 1).

        ᾱ(t) = (σ(end/τ) − σ((t(end − start) + start)/τ)) / (σ(end/τ) − σ(start/τ)), discretised
        like the cosine schedule, β clipped at max_beta.
        """
        _check_num_timesteps(num_timesteps)
        if not start < end:
            raise ValueError(f"need start < end, got start={start!r}, end={end!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        max_beta = _check_max_beta(max_beta)
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

        def alpha_bar_fn(u):
            return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

        betas = _betas_from_alpha_bar_fn(alpha_bar_fn, num_timesteps, max_beta)
        return cls(betas, name="sigmoid", params=dict(start=start, end=end, tau=tau, max_beta=max_beta))

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000, **kwargs) -> "NoiseSchedule":
        """``from_name("linear" | "cosine" | "sigmoid", num_timesteps, **constructor kwargs)``."""
        if name not in SCHEDULE_NAMES:
            raise ValueError(f"schedule name must be one of {SCHEDULE_NAMES}, got {name!r}")
        return getattr(cls, name)(num_timesteps, **kwargs)

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """A new schedule with ᾱ_{T−1} = 0 exactly (Lin et al. 2023, "Common Diffusion Noise
        Schedules and Sample Steps are Flawed", Algorithm 1).

        √ᾱ is shifted so its last value is 0 and scaled so its first value is unchanged. The last β
        becomes exactly 1, so x_T carries no signal and ε-prediction cannot recover x0 there: pair
        this schedule with prediction_type="v_prediction" (or "sample").
        """
        if self.num_timesteps < 2:
            raise ValueError("rescale_zero_terminal_snr needs num_timesteps >= 2")
        sqrt_ab = self.sqrt_alpha_bar
        first, last = sqrt_ab[0].item(), sqrt_ab[-1].item()
        sqrt_ab = (sqrt_ab - last) * (first / (first - last))
        sqrt_ab[0], sqrt_ab[-1] = first, 0.0  # exact, not up to rounding
        alpha_bar = sqrt_ab**2
        alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
        params = dict(self.params, zero_terminal_snr=True)
        return NoiseSchedule(1.0 - alphas, name=self.name, params=params)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """Plain dict (name, parameters, betas as floats) for checkpoints; see :meth:`from_dict`."""
        return {"name": self.name, "params": dict(self.params), "num_timesteps": self.num_timesteps,
                "betas": self.betas.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSchedule":
        """Recreate a schedule from :meth:`to_dict`'s output (the betas are stored exactly)."""
        if not isinstance(d, dict) or "betas" not in d:
            raise ValueError("from_dict needs a dict made by NoiseSchedule.to_dict() (with a 'betas' entry)")
        return cls(d["betas"], name=d.get("name", "custom"), params=d.get("params"))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"NoiseSchedule({self.name}, T={self.num_timesteps}{', ' + params if params else ''})"

    def __len__(self) -> int:
        return self.num_timesteps

    # ------------------------------------------------------------------ validation
    def check_prediction_type(self, prediction_type: str) -> str:
        """Raise ValueError for an unknown prediction type, or for ε-prediction on a schedule with
        zero terminal SNR (x0 = (x_t − √(1−ᾱ)ε)/√ᾱ divides by ᾱ_{T−1} = 0)."""
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if prediction_type == "epsilon" and self.zero_terminal_snr:
            raise ValueError("prediction_type='epsilon' is undefined at the last step of a zero-terminal-SNR "
                             "schedule (alpha_bar = 0); use 'v_prediction' (Lin et al. 2023) or 'sample'")
        return prediction_type

    def check_timesteps(self, t, batch_size: int | None = None) -> torch.Tensor:
        """Return t as a long tensor of shape (N,), raising for floats, wrong shapes or values outside [0, T−1]."""
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.tensor([t] if batch_size is None else [t] * batch_size, dtype=torch.long)
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"t must be an int or an integer tensor of timestep indices, got {type(t).__name__}"
                            f"{'' if not isinstance(t, torch.Tensor) else ' of dtype ' + str(t.dtype)}")
        if t.ndim == 0:
            t = t.reshape(1).expand(batch_size or 1)
        if t.ndim != 1 or (batch_size is not None and t.shape[0] != batch_size):
            raise ValueError(f"t must have shape (N,) with N = batch size {batch_size}, got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.num_timesteps - 1):
            raise ValueError(f"t must lie in [0, {self.num_timesteps - 1}], got values in "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t.long()

    @staticmethod
    def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise TypeError(f"{name_a} and {name_b} must be tensors")
        if a.shape != b.shape:
            raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.ndim < 1:
            raise ValueError(f"{name_a} must have a batch dimension, got a 0-d tensor")

    # ------------------------------------------------------------------ gathering
    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """schedule.<name>[t] cast to like's dtype/device, shaped (N, 1, ..., 1) to broadcast."""
        key = (name, like.dtype, like.device)
        arr = self._cache.get(key)
        if arr is None:
            arr = self._cache[key] = getattr(self, name).to(dtype=like.dtype, device=like.device)
        return arr[t.to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε (DDPM eq. 4), ε = noise or drawn from generator."""
        if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point or x0.ndim < 1:
            raise TypeError("x0 must be a floating-point tensor with a batch dimension")
        t = self.check_timesteps(t, x0.shape[0])
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        self._check_same_shape("x0", x0, "noise", noise)
        return self._gather("sqrt_alpha_bar", t, x0) * x0 + self._gather("sqrt_one_minus_alpha_bar", t, x0) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t−1} | x_t, x0) (DDPM eqs. 6–7).

        mean = √ᾱ_{t−1} β_t/(1 − ᾱ_t) · x0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t,  variance = β̃_t.
        The variance has shape (N, 1, ..., 1) and broadcasts against x_t; at t = 0 it is 0.
        """
        self._check_same_shape("x0", x0, "x_t", x_t)
        t = self.check_timesteps(t, x_t.shape[0])
        mean = self._gather("posterior_mean_coef_x0", t, x_t) * x0 + self._gather("posterior_mean_coef_xt", t, x_t) * x_t
        return mean, self._gather("posterior_variance", t, x_t)

    # ------------------------------------------------------------------ prediction conversions
    def _coefs(self, x_t, t, prediction):
        self._check_same_shape("x_t", x_t, "prediction", prediction)
        t = self.check_timesteps(t, x_t.shape[0])
        return self._gather("sqrt_alpha_bar", t, x_t), self._gather("sqrt_one_minus_alpha_bar", t, x_t)

    def predict_x0(self, x_t: torch.Tensor, t, prediction: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
        """x0 from a network output: ε → (x_t − √(1−ᾱ)ε)/√ᾱ (DDPM eq. 15); v → √ᾱ x_t − √(1−ᾱ) v
        (Salimans & Ho 2022, §4); "sample" is x0 itself (:func:`split_prediction`)."""
        self.check_prediction_type(prediction_type)
        a, b = self._coefs(x_t, t, prediction)
        return split_prediction(x_t, prediction, a, b, prediction_type, need_eps=False)[0]

    def predict_eps(self, x_t: torch.Tensor, t, prediction: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
        """ε from a network output: x0 → (x_t − √ᾱ x0)/√(1−ᾱ); v → √(1−ᾱ) x_t + √ᾱ v (:func:`split_prediction`)."""
        self.check_prediction_type(prediction_type)
        a, b = self._coefs(x_t, t, prediction)
        return split_prediction(x_t, prediction, a, b, prediction_type)[1]

    def convert_prediction(self, x_t: torch.Tensor, t, prediction: torch.Tensor, from_type: str,
                           to_type: str) -> torch.Tensor:
        """:func:`convert_prediction` at timesteps t (a = √ᾱ_t, b = √(1 − ᾱ_t)) between "epsilon", "sample",
        "v_prediction" and "score".

        "velocity" is refused: a discrete schedule has no time derivative, so its velocity depends on a
        choice of continuous time. In the angle φ with a = cos φ, b = sin φ it is v itself (Salimans & Ho
        2022, §4: v = dx_φ/dφ); in the variables of the probability-flow ODE, x̄ = x/√ᾱ and
        σ = √(1 − ᾱ)/√ᾱ, it is ε (dx̄/dσ = ε, the ODE whose Euler step is DDIM, Song et al. 2021a, eq. 14).
        The flow velocity belongs to :class:`FlowPath`; for another time pass its a, b, ȧ, ḃ to
        :func:`convert_prediction`.
        """
        if "velocity" in (from_type, to_type):
            raise ValueError("a NoiseSchedule has discrete timesteps and no velocity: use 'v_prediction' (the velocity "
                             "in the angle φ = arctan(√(1 − ᾱ)/√ᾱ)), 'epsilon' (dx̄/dσ of the probability-flow ODE "
                             "in x̄ = x/√ᾱ, σ = √(1 − ᾱ)/√ᾱ), or a FlowPath for flow matching's velocity")
        a, b = self._coefs(x_t, t, prediction)
        return convert_prediction(x_t, prediction, from_type, to_type, a, b)

    def v_target(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """v = √ᾱ_t · ε − √(1 − ᾱ_t) · x0 (Salimans & Ho 2022, "Progressive Distillation", §4)."""
        self._check_same_shape("x0", x0, "eps", eps)
        t = self.check_timesteps(t, x0.shape[0])
        return self._gather("sqrt_alpha_bar", t, x0) * eps - self._gather("sqrt_one_minus_alpha_bar", t, x0) * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t, prediction_type: str = "epsilon") -> torch.Tensor:
        """What the network should output at x_t = q_sample(x0, t, noise): noise, x0 or v.

        Raises for ε-prediction on a zero-terminal-SNR schedule now rather than at sampling time.
        """
        self.check_prediction_type(prediction_type)
        self._check_same_shape("x0", x0, "noise", noise)
        t = self.check_timesteps(t, x0.shape[0])
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        return self.v_target(x0, noise, t)


class FlowPath:
    """The straight path of flow matching: x_t = (1 − t)·x0 + t·ε for continuous t ∈ [0, 1].

    Lipman et al. 2023 ("Flow Matching for Generative Modeling", eq. 20–23 with σ_min = 0) and Liu
    et al. 2023 (rectified flow): t = 0 is data, t = 1 is pure noise, and the path's velocity
        u_t = dx_t/dt = ε − x0
    is the network's training target. In the notation of the diffusion forward process x_t = a_t·x0 +
    b_t·ε this is a_t = 1 − t, b_t = t (a² + b² ≠ 1: the path is not variance preserving). Lipman et al.
    run time the other way (their t = 0 is noise, their x1 data); here t follows the diffusion convention.
    The velocity is written u (u_θ for the network) because v is Salimans & Ho's v-prediction.

    The network is the same UNet as for diffusion: it sees the time as t·(T − 1), the range [0, T − 1]
    of a diffusion model's timesteps (``num_timesteps`` = T), so its time embedding is unchanged.
    """

    def __init__(self, num_timesteps: int = 1000):
        if _check_num_timesteps(num_timesteps) < 2:
            raise ValueError(f"num_timesteps must be >= 2 for a FlowPath (the network time t·(T − 1) would be 0 "
                             f"for every t), got {num_timesteps}")
        self.num_timesteps = num_timesteps

    @staticmethod
    def check_t(t, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """t as a float tensor of shape (N, 1, ..., 1) on like's device, refused outside [0, 1]."""
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = torch.full((batch_size,), float(t), dtype=torch.float64)  # exact for a float64 x_t too
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            raise TypeError(f"t must be a float or a floating-point tensor of times in [0, 1], got "
                            f"{type(t).__name__}{'' if not isinstance(t, torch.Tensor) else ' of dtype ' + str(t.dtype)}")
        if t.ndim == 0:
            t = t.reshape(1).expand(batch_size)
        if t.ndim != 1 or t.shape[0] != batch_size:
            raise ValueError(f"t must have shape (N,) with N = batch size {batch_size}, got {tuple(t.shape)}")
        if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"t must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}]")
        return t.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 − t)·x0 + t·ε (Lipman et al. 2023, eq. 22 with σ_min = 0)."""
        NoiseSchedule._check_same_shape("x0", x0, "noise", noise)
        t = self.check_t(t, x0.shape[0], x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """u_t(x_t | x0, ε) = ε − x0, the conditional velocity (eq. 23 with σ_min = 0)."""
        NoiseSchedule._check_same_shape("x0", x0, "noise", noise)
        return noise - x0

    def coefficients(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """(a_t, b_t, ȧ_t, ḃ_t) = (1 − t, t, −1, 1) of x_t = a_t·x0 + b_t·ε, a and b shaped to broadcast against like."""
        t = self.check_t(t, like.shape[0], like)
        return 1 - t, t, -1.0, 1.0

    def convert_prediction(self, x_t: torch.Tensor, t, prediction: torch.Tensor, from_type: str,
                           to_type: str) -> torch.Tensor:
        """:func:`convert_prediction` on this path at times t ∈ [0, 1] between "epsilon", "sample",
        "v_prediction" (a·ε − b·x0 with a = 1 − t, b = t), "score" and "velocity" (u = ε − x0):
        e.g. x0 = x_t − t·u, ε = x_t + (1 − t)·u, and u = (x_t − x0)/t = (ε − x_t)/(1 − t)."""
        NoiseSchedule._check_same_shape("x_t", x_t, "prediction", prediction)
        a, b, da, db = self.coefficients(t, x_t)
        return convert_prediction(x_t, prediction, from_type, to_type, a, b, da, db)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input for t ∈ [0, 1]: t·(T − 1), the range of a diffusion UNet's timesteps."""
        return t * (self.num_timesteps - 1)

    def to_dict(self) -> dict:
        return {"name": "flow_linear", "num_timesteps": self.num_timesteps}

    @classmethod
    def from_dict(cls, d: dict) -> "FlowPath":
        if not isinstance(d, dict) or d.get("name") != "flow_linear":
            raise ValueError(f"from_dict needs a dict made by FlowPath.to_dict(), got {d!r}")
        return cls(d["num_timesteps"])

    def __repr__(self) -> str:
        return f"FlowPath(x_t = (1 − t)·x0 + t·ε, model time t·{self.num_timesteps - 1})"
