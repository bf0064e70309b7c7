"""LogME (You, Liu, Wang and Long, ICML 2021): the log marginal evidence of a Bayesian linear model on frozen
features, per class (one-vs-rest targets), maximised over its two precisions and averaged over the classes.

For features F (N x D) and a target y (N), weights w ~ N(0, 1/alpha I), y | F, w ~ N(F w, 1/beta I):

    L(alpha, beta) = D/2 log alpha + N/2 log beta - 1/2 log|A| - beta/2 |F m - y|^2 - alpha/2 |m|^2 - N/2 log 2 pi,
    A = alpha I + beta F^T F,  m = beta A^-1 F^T y.

With t = alpha / beta and E(t) = |F m - y|^2 + t |m|^2 = t sum_i x_i^2 / (sigma_i + t) + |y outside F's span|^2
(sigma_i the eigenvalues of F^T F, x_i^2 the target's squared coordinates along them), the best beta for a given
t is N / E(t), which leaves one variable:

    L(t) = D/2 log t - 1/2 sum_i log(t + sigma_i) - N/2 log E(t) + N/2 log N - N/2 - N/2 log 2 pi.

transferkit maximises L(t) over log t (a grid, then Brent's method around its best point) instead of iterating
MacKay's fixed point, which diverges when the evidence has no finite maximum: when a class's target lies in the
span of the features (always so with fewer images than feature dimensions, and when the features separate the
classes), L may keep rising as t -> 0 (noise-free interpolation, beta -> infinity): towards a finite limit with
N <= D at full rank, without bound when the rank is below N. t is therefore kept within
[scale / T_BOUND, scale * T_BOUND], scale the mean non-zero eigenvalue of F^T F; a class whose maximum lies on
that bound is reported (`bound`: "lower" or "upper") and its evidence is the value at the bound, a lower bound
of the supremum. log|A| counts the D - N zero eigenvalues when there are fewer images than features (the paper's
definition; the reference code's fast path drops them). LogME is max L / N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

T_BOUND = 1e6  # alpha / beta kept within 1e-6 .. 1e6 times the spectrum's scale (the score is the evidence there)
GRID = 57  # points on log t over the bounded range (about a quarter of a decade apart)
TOLERANCE = 1e-9  # Brent's tolerance on log t around the best grid point


@dataclass(frozen=True)
class LogME:
    """The score (mean over classes of max L / N) and, per class, the evidence, the precisions at its maximum,
    whether that maximum lies inside the bounded range (`converged`), Brent's iterations, and which bound was
    hit (None, "lower": the class lies in the features' span, "upper": the features carry nothing of it)."""

    score: float
    per_class: list[float]
    alpha: list[float]
    beta: list[float]
    converged: list[bool]
    iterations: list[int]
    bound: list[str | None]

    @property
    def classes_at_bound(self) -> int:
        return sum(b is not None for b in self.bound)


def logme(features: np.ndarray, labels: np.ndarray) -> LogME:
    """LogME of `features` (N x D, finite) for integer class `labels` (N); every class is a one-vs-rest target."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) != len(labels) or len(f) == 0:
        raise ValueError(f"logme needs N x D features and N labels, got {f.shape} and {len(labels)}")
    if not np.isfinite(f).all():
        raise ValueError("logme needs finite features")
    n, d = f.shape
    classes = np.unique(labels)
    y = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float64)  # N x C one-hot targets
    sigma, x2 = _spectrum(f, y)
    outside = np.clip((y**2).sum(0) - x2.sum(0), 0.0, None)  # |y|^2 beyond the span of F's columns
    positive = sigma[sigma > 0]
    scale = float(positive.mean()) if len(positive) else 1.0
    lo, hi = math.log(scale / T_BOUND), math.log(scale * T_BOUND)
    grid = np.linspace(lo, hi, GRID)
    rows = []
    for c in range(y.shape[1]):
        def profile(log_t: float, c: int = c) -> float:
            return float(_profile(np.array([log_t]), sigma[:, 0], x2[:, c], outside[c], n, d)[0])

        values = _profile(grid, sigma[:, 0], x2[:, c], outside[c], n, d)
        k = int(values.argmax())
        found = minimize_scalar(lambda v: -profile(v), bounds=(grid[max(k - 1, 0)], grid[min(k + 1, GRID - 1)]),
                                method="bounded", options={"xatol": TOLERANCE})
        log_t, best = (found.x, -found.fun) if -found.fun >= values[k] else (grid[k], values[k])
        bound = "lower" if log_t - lo < 1e-6 else "upper" if hi - log_t < 1e-6 else None
        t = math.exp(log_t)
        beta = float(n / _energy(t, sigma[:, 0], x2[:, c], outside[c])[0])
        rows.append((float(best) / n, t * beta, beta, bool(found.success) and bound is None, int(found.nit), bound))
    per_class, alpha, beta, converged, iterations, bound = (list(column) for column in zip(*rows, strict=True))
    return LogME(float(np.mean(per_class)), per_class, alpha, beta, converged, iterations, bound)


def _energy(t: float | np.ndarray, sigma: np.ndarray, x2: np.ndarray, outside: float) -> np.ndarray:
    """E(t) = |F m - y|^2 + t |m|^2 at the posterior mean m for alpha / beta = t."""
    t = np.asarray(t, dtype=np.float64)
    return t * (x2[None, :] / (sigma[None, :] + t.reshape(-1, 1))).sum(1) + outside


def _profile(log_t: np.ndarray, sigma: np.ndarray, x2: np.ndarray, outside: float, n: int, d: int) -> np.ndarray:
    """L(t) with beta at its best for each t (see the module's docstring)."""
    t = np.exp(log_t)
    energy = _energy(t, sigma, x2, outside)
    return (d / 2 * log_t - 0.5 * np.log(sigma[None, :] + t[:, None]).sum(1) - n / 2 * np.log(energy)
            + n / 2 * math.log(n) - n / 2 - n / 2 * math.log(2 * math.pi))


def _spectrum(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The D eigenvalues sigma_i of F^T F (D x 1) and (u_i . y)^2 for each target (D x C), u_i = F v_i / sqrt(sigma_i):
    from the smaller of F^T F and F F^T (the same non-zero eigenvalues; the rest are zero)."""
    n, d = f.shape
    if n < d:
        sigma, u = np.linalg.eigh(f @ f.T)
        sigma = np.concatenate([np.clip(sigma, 0.0, None), np.zeros(d - n)])[:, None]
        x2 = np.concatenate([(u.T @ y) ** 2, np.zeros((d - n, y.shape[1]))])
        keep = sigma > sigma.max() * 1e-12
        return np.where(keep, sigma, 0.0), np.where(keep, x2, 0.0)
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0.0, None)[:, None]  # rounding leaves tiny negatives
    z = v.T @ (f.T @ y)  # F^T y in the eigenbasis
    keep = sigma > sigma.max() * 1e-12
    return np.where(keep, sigma, 0.0), np.where(keep, z**2 / np.where(keep, sigma, 1.0), 0.0)


def evidence(alpha: float, beta: float, features: np.ndarray, target: np.ndarray) -> float:
    """L(alpha, beta) / N for one target, written out from its definition (the tests' check of the profile)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ target)
    _, logdet = np.linalg.slogdet(a)
    value = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - logdet / 2 - beta / 2 * ((f @ m - target) ** 2).sum()
             - alpha / 2 * (m**2).sum() - n / 2 * math.log(2 * math.pi))
    return float(value / n)
