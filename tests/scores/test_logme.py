"""LogME against the evidence evaluated independently: log N(y; 0, 1/beta I + 1/alpha F F^T), maximised by search."""

import math

import numpy as np
import pytest

from transferkit.scores import logme


def marginal_likelihood(f: np.ndarray, y: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """log p(y | alpha, beta) of the Bayesian linear model, w integrated out: y ~ N(0, I/beta + F F^T/alpha)."""
    n = len(y)
    cov = np.eye(n)[None] / beta[:, None, None] + (f @ f.T)[None] / alpha[:, None, None]
    _, logdet = np.linalg.slogdet(cov)
    quad = np.einsum("i,kij,j->k", y, np.linalg.inv(cov), y)
    return -0.5 * (logdet + quad + n * math.log(2 * math.pi))


def maximum_by_search(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) on a log grid, refined around the best point until the step is 1e-5 in log."""
    centre, half, best = np.zeros(2), 12.0, -np.inf
    while half > 1e-5:
        axis = np.linspace(-half, half, 41)
        la, lb = np.meshgrid(centre[0] + axis, centre[1] + axis, indexing="ij")
        values = marginal_likelihood(f, y, np.exp(la.ravel()), np.exp(lb.ravel()))
        i = int(values.argmax())
        best, centre, half = values[i], np.array([la.ravel()[i], lb.ravel()[i]]), half / 8
    return best


# More images than features (a maximum inside), and fewer (F^T F has D - N zero eigenvalues; y lies in F's span,
# so the evidence may rise towards beta = infinity and the search can only bound it from below).
@pytest.mark.parametrize("n, d", [(40, 6), (12, 20)])
def test_logme_is_the_maximum_evidence_per_class_averaged(n, d):
    rng = np.random.default_rng(n)
    labels = np.arange(n) % 3
    f = rng.normal(size=(n, d)) + rng.normal(size=(3, d))[labels]  # each class has its own centre: predictable
    result = logme(f, labels)
    for c in range(3):
        y = (labels == c).astype(float)
        at_fixed_point = marginal_likelihood(f, y, np.array([result.alpha[c]]), np.array([result.beta[c]]))[0] / n
        assert result.per_class[c] == pytest.approx(at_fixed_point, rel=1e-7)
        searched = maximum_by_search(f, y) / n
        assert result.per_class[c] >= searched - 1e-9
        if n > d:
            assert result.per_class[c] == pytest.approx(searched, abs=1e-7)
    assert result.score == pytest.approx(np.mean(result.per_class))


def test_logme_prefers_features_that_predict_the_labels():
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 4
    informative = np.eye(4)[labels] * 3 + rng.normal(size=(300, 4))
    noise = rng.normal(size=(300, 4))
    assert logme(informative, labels).score > logme(noise, labels).score + 0.1
