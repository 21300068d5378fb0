"""Gaussian statistics of features and the Fréchet distance between two of them (Heusel et al. 2017).

d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}   (FID, eq. 6 of the TTUR paper).

The usual code takes a general matrix square root of Σ₁Σ₂ (``scipy.linalg.sqrtm``: a Schur
decomposition of a non-symmetric 2048 × 2048 matrix, about a minute on two cores). Only the trace is
needed, and Σ₁Σ₂ has the same eigenvalues as the symmetric PSD matrix M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}
(AB and BA share eigenvalues, with A = Σ₁^{1/2}, B = Σ₁^{1/2} Σ₂), so tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(M):
two symmetric eigendecompositions in float64, a few seconds.

With fewer images than dimensions, the features themselves give the trace more cheaply: with centred
features X₁ (n₁ × D), X₂ and Σᵢ = XᵢᵀXᵢ/(nᵢ − 1), the non-zero eigenvalues of Σ₁Σ₂ are those of
CCᵀ/((n₁ − 1)(n₂ − 1)) with C = X₁X₂ᵀ (n₁ × n₂), so tr (Σ₁Σ₂)^{1/2} = ‖C‖_* / √((n₁ − 1)(n₂ − 1)),
the sum of C's singular values (square roots of the eigenvalues of CCᵀ): O(n₁n₂D + n³) instead of O(D³).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass
class FeatureStats:
    """Mean ``mu`` (D,), covariance ``sigma`` (D, D) with the n − 1 denominator, count ``n``, extractor name."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str = "unknown"

    def __post_init__(self):
        self.mu = _as_float64(self.mu)
        self.sigma = _as_float64(self.sigma)
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0],) * 2:
            raise ValueError(f"mu must be (D,) and sigma (D, D), got {self.mu.shape} and {self.sigma.shape}")
        self.n = int(self.n)

    @classmethod
    def from_features(cls, features, extractor: str = "unknown", chunk: int = 4096) -> "FeatureStats":
        """Two passes over (N, D) features in float64 chunks: the mean, then the centred outer products."""
        f = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"features must be (N, D) with N >= 2, got {tuple(f.shape)}")
        f = f.detach().cpu()
        mu = f.double().sum(0) / f.shape[0]
        sigma = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        for start in range(0, f.shape[0], chunk):
            c = f[start:start + chunk].double() - mu
            sigma += c.T @ c
        return cls(mu.numpy(), (sigma / (f.shape[0] - 1)).numpy(), f.shape[0], extractor)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, n=self.n, extractor=self.extractor)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        with np.load(path) as z:
            return cls(z["mu"], z["sigma"], int(z["n"]), str(z["extractor"]))


def _drop_roundoff(eig: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those at round-off level (|λ| ≤ D·ε·λ_max, incl. negative ones) set
    to 0: their square roots (~√ε) would otherwise add up to ~1e-6 relative error for singular covariances."""
    tol = eig.shape[0] * np.finfo(np.float64).eps * max(eig.max(initial=0.0), 0.0)
    return np.where(eig > tol, eig, 0.0)


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix by eigh."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(_drop_roundoff(w))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr (Σ₁Σ₂)^{1/2} = Σ √λ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}), both eigendecompositions symmetric, in float64."""
    sigma1, sigma2 = _as_float64(sigma1), _as_float64(sigma2)
    root = sqrtm_psd(sigma1)
    m = root @ sigma2 @ root
    eig = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrise away round-off before eigvalsh
    return float(np.sqrt(_drop_roundoff(eig)).sum())


def _check(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    sigma1, sigma2 = _as_float64(sigma1), _as_float64(sigma2)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError("mu1, mu2 must be (D,) and sigma1, sigma2 (D, D) with one D, got "
                         f"{mu1.shape}, {mu2.shape}, {sigma1.shape}, {sigma2.shape}")
    return mu1, sigma1, mu2, sigma2


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) by symmetric eigendecompositions (float64)."""
    mu1, sigma1, mu2, sigma2 = _check(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The reference route of the TTUR and pytorch-fid code: ``scipy.linalg.sqrtm(Σ₁Σ₂)``, with ``eps`` added
    to the diagonals if the product is singular. Slow at D = 2048; kept to check and to teach."""
    from scipy import linalg

    mu1, sigma1, mu2, sigma2 = _check(mu1, sigma1, mu2, sigma2)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_features(features1, features2) -> float:
    """Fréchet distance of the Gaussians fitted to two (N, D) feature sets, through the nuclear norm of
    X₁X₂ᵀ (module docstring); equal to ``frechet_distance`` of their statistics, and cheaper when N < D."""
    x1, x2 = _as_float64(features1), _as_float64(features2)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 2:
        raise ValueError(f"features must be (N1, D) and (N2, D) with N >= 2, got {x1.shape} and {x2.shape}")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    x1, x2 = x1 - mu1, x2 - mu2
    n1, n2 = len(x1) - 1, len(x2) - 1
    c = x1 @ x2.T
    gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
    # singular values of C as √eig(CCᵀ): a symmetric eigenproblem, several times faster than an SVD
    trace_sqrt = np.sqrt(_drop_roundoff(np.linalg.eigvalsh(gram))).sum() / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    return float(diff @ diff + (x1 * x1).sum() / n1 + (x2 * x2).sum() / n2 - 2 * trace_sqrt)
