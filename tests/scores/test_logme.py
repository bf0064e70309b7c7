"""LogME against the evidence evaluated independently: log N(y; 0, 1/beta I + 1/alpha F F^T), maximised by search."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- independent checks of the maximum, the reference code, and every degenerate input ---

def maximum_by_scipy(f: np.ndarray, y: np.ndarray) -> float:
    """max over (log alpha, log beta) of the evidence written from its definition, by Nelder-Mead from a few starts."""
    from scipy.optimize import minimize

    from transferkit.scores.logme import evidence

    best = -np.inf
    for start in ([0.0, 0.0], [-3.0, 2.0], [3.0, -1.0]):
        found = minimize(lambda v: -evidence(math.exp(v[0]), math.exp(v[1]), f, y), start, method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000})
        best = max(best, -found.fun)
    return best


def reference_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """thuml/LogME's `_fit_fixed_point` (LogME.py), as published: 11 iterations at most, epsilon 1e-5 in both
    updates, stopping at a 1% change of alpha / beta."""
    f = f.astype(np.float64)
    fh = f
    f = f.transpose()
    d, n = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha, beta, lam = 1.0, 1.0, 1.0
        tmp = vh @ (f @ y)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (tmp * beta / (alpha + beta * s))
            alpha_de = (m * m).sum()
            alpha = gamma / (alpha_de + 1e-5)
            res = y - fh @ m
            beta_de = (res * res).sum()
            beta = (n - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if np.abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        evidences.append((d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                          - beta / 2.0 * beta_de - alpha / 2.0 * alpha_de - n / 2.0 * np.log(2 * np.pi)) / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_matches_scipy_on_both_precisions_where_a_maximum_exists(seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(80) % 4
    f = rng.normal(size=(80, 10)) + rng.normal(size=(4, 10))[labels]  # N > D, noisy: an inside maximum
    result = logme(f, labels)
    assert result.bound == [None] * 4 and all(result.converged)
    for c in range(4):
        assert result.per_class[c] == pytest.approx(maximum_by_scipy(f, (labels == c).astype(float)), abs=1e-8)


def test_logme_matches_the_reference_code_where_it_is_right():
    # N > D, full rank, classes not separable: the reference's epsilon and 1% stop change the score only slightly.
    rng = np.random.default_rng(7)
    labels = np.arange(400) % 5
    f = rng.normal(size=(400, 16)) + 0.7 * rng.normal(size=(5, 16))[labels]
    assert logme(f, labels).score == pytest.approx(reference_logme(f, labels), abs=2e-4)


def test_separable_features_with_fewer_images_than_dimensions_hit_the_stated_bound():
    # The case: N < D and classes the features separate; the reference's fixed point runs beta up to its
    # epsilon, TLlib's to NaN. Here the maximum lies at the lower bound of alpha / beta, said per class.
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    f = rng.normal(size=(60, 1280)) + 3 * rng.normal(size=(3, 1280))[labels]
    result = logme(f, labels)
    assert math.isfinite(result.score)
    assert result.bound == ["lower"] * 3 and result.converged == [False] * 3 and result.classes_at_bound == 3
    assert all(math.isfinite(a) and a > 0 for a in result.alpha + result.beta)


def test_labels_inside_the_features_hit_the_lower_bound_and_noise_does_not():
    labels = np.arange(90) % 3
    rng = np.random.default_rng(3)
    exact = np.concatenate([np.eye(3)[labels], rng.normal(size=(90, 2))], axis=1)  # the target is a column
    assert logme(exact, labels).bound == ["lower"] * 3
    assert logme(rng.normal(size=(90, 5)), labels).bound != ["lower"] * 3


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 60), classes=st.integers(1, 4), kind=st.sampled_from(
    ["normal", "duplicated", "constant", "zero", "rank1", "huge", "tiny", "separable"]), seed=st.integers(0, 2**16))
def test_logme_is_finite_on_every_input(n, d, classes, kind, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    f = {"normal": lambda: rng.normal(size=(n, d)),
         "duplicated": lambda: np.repeat(rng.normal(size=(1, d)), n, axis=0),
         "constant": lambda: np.full((n, d), 3.0),
         "zero": lambda: np.zeros((n, d)),
         "rank1": lambda: rng.normal(size=(n, 1)) @ rng.normal(size=(1, d)),
         "huge": lambda: rng.normal(size=(n, d)) * 1e6,
         "tiny": lambda: rng.normal(size=(n, d)) * 1e-6,
         "separable": lambda: np.eye(max(classes, 1), d)[labels] * 5 + 0.01 * rng.normal(size=(n, d))}[kind]()
    result = logme(f, labels)
    values = [result.score, *result.per_class, *result.alpha, *result.beta]
    assert all(math.isfinite(v) for v in values), (kind, result)
    assert all(b in (None, "lower", "upper") for b in result.bound)
    assert all(c == (b is None) for c, b in zip(result.converged, result.bound, strict=True)) or not all(result.converged)
    # The reported evidence is the evidence at the reported precisions (no value that belongs to no model).
    from transferkit.scores.logme import evidence
    if d <= 60 and kind not in ("huge", "tiny"):
        for c, cls in enumerate(np.unique(labels)):
            target = (labels == cls).astype(float)
            assert result.per_class[c] == pytest.approx(evidence(result.alpha[c], result.beta[c], f, target),
                                                        rel=1e-6, abs=1e-6)


def test_logme_refuses_non_finite_features():
    with pytest.raises(ValueError, match="finite"):
        logme(np.array([[1.0, np.nan], [0.0, 1.0]]), np.array([0, 1]))
