"""LogME (You, Liu, Wang and Long, ICML 2021): the log marginal evidence of a Bayesian linear model on frozen
features, per class (one-vs-rest targets), maximised over its two precisions and averaged over the classes.

For features F (N x D) and a target y (N), weights w ~ N(0, 1/alpha I), y | F, w ~ N(F w, 1/beta I):

    L(alpha, beta) = D/2 log alpha + N/2 log beta - 1/2 log|A| - beta/2 |F m - y|^2 - alpha/2 |m|^2 - N/2 log 2 pi,
    A = alpha I + beta F^T F,  m = beta A^-1 F^T y,

maximised by MacKay's fixed point (gamma = sum sigma_i / (sigma_i + alpha/beta), alpha = gamma / |m|^2,
beta = (N - gamma) / |F m - y|^2) after one eigendecomposition of F^T F (or of F F^T, when smaller); LogME is max L / N. Unlike the reference
code's fast path, log|A| counts the D - N zero eigenvalues when there are fewer images than features (the
paper's definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_ITERATIONS = 100  # the paper reports convergence in a few steps; the tests' cases take under 20
TOLERANCE = 1e-7  # relative change of alpha / beta at which the fixed point is taken as reached


@dataclass(frozen=True)
class LogME:
    """The score (mean over classes of max L / N) and, per class, the precisions at the maximum."""

    score: float
    per_class: list[float]
    alpha: list[float]
    beta: list[float]
    iterations: int


def logme(features: np.ndarray, labels: np.ndarray) -> LogME:
    """LogME of `features` (N x D) for integer class `labels` (N); every class is a one-vs-rest target."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    classes = np.unique(labels)
    y = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float64)  # N x C one-hot targets
    sigma, x2 = _spectrum(f, y)
    outside = np.clip((y**2).sum(0) - x2.sum(0), 0.0, None)  # |y|^2 beyond the span of F's columns
    alpha, beta = np.ones(y.shape[1]), np.ones(y.shape[1])
    for iteration in range(1, MAX_ITERATIONS + 1):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)
        m2 = (sigma * x2 / (sigma + t) ** 2).sum(0)  # |m|^2
        residual = (x2 * (t / (sigma + t)) ** 2).sum(0) + outside  # |F m - y|^2
        new_alpha = gamma / np.maximum(m2, 1e-300)
        new_beta = (n - gamma) / np.maximum(residual, 1e-300)
        converged = np.all(np.abs(new_alpha / new_beta - t) <= TOLERANCE * t)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    evidence = _evidence(alpha, beta, sigma, x2, outside, n, d) / n
    return LogME(float(evidence.mean()), evidence.tolist(), alpha.tolist(), beta.tolist(), iteration)


def _spectrum(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The D eigenvalues sigma_i of F^T F (D x 1) and (u_i . y)^2 for each target (D x C), u_i = F v_i / sqrt(sigma_i):
    from the smaller of F^T F and F F^T (the same non-zero eigenvalues; the rest are zero)."""
    n, d = f.shape
    if n < d:
        sigma, u = np.linalg.eigh(f @ f.T)
        sigma = np.concatenate([np.clip(sigma, 0.0, None), np.zeros(d - n)])[:, None]
        x2 = np.concatenate([(u.T @ y) ** 2, np.zeros((d - n, y.shape[1]))])
        return sigma, np.where(sigma > sigma.max() * 1e-12, x2, 0.0)
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0.0, None)[:, None]  # rounding leaves tiny negatives
    z = v.T @ (f.T @ y)  # F^T y in the eigenbasis
    positive = sigma > sigma.max() * 1e-12
    return sigma, np.where(positive, z**2 / np.where(positive, sigma, 1.0), 0.0)


def _evidence(alpha: np.ndarray, beta: np.ndarray, sigma: np.ndarray, x2: np.ndarray, outside: np.ndarray,
              n: int, d: int) -> np.ndarray:
    """L(alpha, beta) per class, with m at its posterior mean for these precisions."""
    t = alpha / beta
    m2 = (sigma * x2 / (sigma + t) ** 2).sum(0)
    residual = (x2 * (t / (sigma + t)) ** 2).sum(0) + outside
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum(0)
            - beta / 2 * residual - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
