"""MIG, DCI, TAD / ATTRS: pieces against scikit-learn / numpy, and whole metrics on latents with a known answer."""

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from sklearn.linear_model import Lasso
from sklearn.metrics import mutual_info_score, roc_auc_score

from dbae_core.data import ShapesDataset, factors_to_attributes
from dbae_core.metrics import auroc, dci, discretise, entropy, lasso, mig, mutual_info, tad

N = 2000


def factors(seed=0, n=N, k=6):
    """Independent factors: one categorical (4 classes) and k − 1 uniform ones."""
    rng = np.random.default_rng(seed)
    v = rng.random((n, k))
    v[:, 0] = rng.integers(0, 4, n)
    return v


def rotation(d, seed=1):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


def standardise(v):
    return (v - v.mean(0)) / v.std(0)


def test_information_pieces_equal_references():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 500), rng.integers(0, 4, 500)
    b = np.where(rng.random(500) < 0.5, a % 4, b)
    assert mutual_info(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)
    assert entropy(a) == pytest.approx(scipy_entropy(np.bincount(a)), abs=1e-12)
    x = rng.normal(size=(300, 3))
    for j in range(3):  # equal-width bins as np.histogram draws them, the maximum in the last bin
        edges = np.histogram(x[:, j], bins=20)[1]
        assert np.array_equal(discretise(x, 20)[:, j], np.digitize(x[:, j], edges[:-1]) - 1)
    assert np.array_equal(discretise(np.array([[0.5], [2.0], [0.5]]))[:, 0], [0, 1, 0])  # few values: one code each


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random((400, 3)) < 0.3
    s = np.round(rng.normal(size=(400, 5)) + y[:, [0, 1, 2, 0, 1]], 1)
    a = auroc(s, y)
    for k in range(3):
        for j in range(5):
            assert a[k, j] == pytest.approx(roc_auc_score(y[:, k], s[:, j]), abs=1e-12)


def test_lasso_equals_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10)) * rng.uniform(0.5, 2, 10)
    y = x[:, [0, 3]] @ np.array([[1.0, 0], [0, -2.0]]) + 0.3 * rng.normal(size=(300, 2)) + 1.5
    w, b = lasso(x, y, alpha=0.05)
    for k in range(2):
        ref = Lasso(alpha=0.05, tol=1e-12, max_iter=100_000).fit(x, y[:, k])
        np.testing.assert_allclose(w[:, k], ref.coef_, atol=1e-7)
        assert b[k] == pytest.approx(ref.intercept_, abs=1e-7)


def test_mig_copy_is_near_perfect_rotation_and_noise_are_low():
    v = factors()
    rng = np.random.default_rng(2)
    z = np.concatenate([standardise(v), 0.1 * rng.normal(size=(N, 4))], 1)
    assert mig(z, v)["mig"] > 0.9
    assert mig(z @ rotation(10), v)["mig"] < 0.2
    assert mig(rng.normal(size=(N, 10)), v)["mig"] < 0.05


def test_dci_copy_is_near_perfect_rotation_is_entangled_but_informative():
    v = factors()
    rng = np.random.default_rng(3)
    z = np.concatenate([standardise(v), 0.1 * rng.normal(size=(N, 4))], 1)
    h = N // 2
    copy = dci(z[:h], v[:h], z[h:], v[h:])
    assert copy["disentanglement"] > 0.95 and copy["completeness"] > 0.95 and copy["informativeness"] > 0.95
    zr = z @ rotation(10)
    rot = dci(zr[:h], v[:h], zr[h:], v[h:])
    assert rot["disentanglement"] < 0.5 and rot["completeness"] < 0.5
    assert rot["informativeness"] > 0.9  # a rotation loses no linear information
    noise = rng.normal(size=(N, 10))
    assert dci(noise[:h], v[:h], noise[h:], v[h:])["informativeness"] < 0.05


def test_dci_completeness_weights_each_factor_by_its_importance():
    """disentanglement_lib: completeness = Σ_k ρ_k (1 − H_D(P_·k)), ρ_k = Σ_j R_jk / Σ R. Two factors copied into one
    dimension each and a third the code does not carry: the third has almost no importance and barely counts (the
    plain mean over factors would give ~2/3)."""
    rng = np.random.default_rng(4)
    v = rng.random((N, 3))
    z = np.concatenate([v[:, :2], rng.normal(size=(N, 4))], 1)
    h = N // 2
    out = dci(z[:h], v[:h], z[h:], v[h:])
    r = out["importance"]
    rho = r.sum(0) / r.sum()
    per_factor = 1 - scipy_entropy(r, base=r.shape[0])  # columns normalised by scipy
    assert rho[2] < 0.1 and per_factor[2] < 0.8 and per_factor[:2] == pytest.approx([1.0, 1.0])
    assert out["completeness"] == pytest.approx(float((rho * per_factor).sum()), rel=1e-9)
    assert out["completeness"] > 0.95


def test_shapes_factors_copied_beat_their_rotation():
    ds = ShapesDataset(size=8, length=N)
    v = ds.factors(range(N)).numpy().astype(np.float64)
    z = np.concatenate([standardise(v), 0.1 * np.random.default_rng(0).normal(size=(N, 4))], 1)
    zr = z @ rotation(12)
    assert mig(z, v)["mig"] > 0.7 > 0.1 > mig(zr, v)["mig"]  # rotation_cos/sin share information: not 1
    h = N // 2
    assert dci(z[:h], v[:h], z[h:], v[h:])["disentanglement"] > 0.9 > 0.5 > dci(zr[:h], v[:h], zr[h:], v[h:])[
        "disentanglement"]


def attributes(seed=0, n=N, k=5):
    return (np.random.default_rng(seed).random((n, k)) < 0.4).astype(np.float64)


def test_tad_copied_attributes_are_all_captured_with_half_gaps():
    y = attributes()
    z = np.concatenate([2 * y, np.random.default_rng(1).normal(size=(N, 3))], 1)
    out = tad(z, y)
    assert out["attrs"] == 5
    # best AUROC 1; second best ≈ 0.5 (an independent attribute or noise), up to sampling error
    assert np.all(np.abs(out["gap"] - 0.5) < 0.06)
    assert out["tad"] == pytest.approx(out["gap"].sum())
    rotated = tad(z @ rotation(8), y)
    assert rotated["tad"] < 0.5 * out["tad"]


def test_tad_duplicated_dimension_has_zero_gap():
    y = attributes()
    z = np.concatenate([2 * y, 2 * y[:, :1], np.random.default_rng(1).normal(size=(N, 3))], 1)
    out = tad(z, y)
    assert out["gap"][0] == 0.0 and out["captured"][0]
    assert out["tad"] == pytest.approx(out["gap"][1:].sum())


def test_tad_skips_attributes_explained_by_another_and_constant_dimensions():
    y = attributes()
    y = np.concatenate([y, y[:, :1]], 1)  # attribute 5 repeats attribute 0: neither is captured
    z = np.concatenate([2 * y[:, :5], np.random.default_rng(1).normal(size=(N, 3))], 1)
    out = tad(z, y)
    assert not out["captured"][0] and not out["captured"][5] and out["attrs"] == 4
    constant = np.concatenate([z, np.full((N, 1), 3.0)], 1)  # a constant dimension is chance, never NaN
    assert tad(constant, y)["tad"] == pytest.approx(out["tad"]) and np.all(tad(constant, y)["auroc"][:, -1] == 0.5)


def test_tad_standardises_the_latents_so_their_scale_does_not_matter():
    """The reference evaluation standardises the latents (StandardScaler) before TAD, so the 'range ≤ 0.2 is chance'
    rule removes only constant dimensions: latents scaled by 0.05 (every range below 0.2) keep all four attributes,
    whose gaps are the AUROC gaps computed with scikit-learn (best dimension 1, the next ≈ 0.5)."""
    y = attributes()[:, :4]
    z = np.concatenate([2 * y, np.random.default_rng(1).normal(size=(N, 3))], 1)
    small = 0.05 * z * np.array([1, 1.5, 0.5, 2, 0.3, 0.2, 0.4])  # unequal scales per dimension
    assert np.ptp(small, axis=0).max() <= 0.2 + 1e-12
    out = tad(small, y)
    auc = np.array([[max(roc_auc_score(y[:, k], z[:, j]), roc_auc_score(y[:, k], -z[:, j])) for j in range(7)]
                    for k in range(4)])
    top = np.sort(auc, axis=1)
    assert out["attrs"] == 4
    assert out["tad"] == pytest.approx(float((top[:, -1] - top[:, -2]).sum()), rel=1e-9)
    assert tad(z, y)["tad"] == pytest.approx(out["tad"], rel=1e-12)


def test_tad_on_shapes_attributes_copied():
    ds = ShapesDataset(size=8, length=N)
    y = factors_to_attributes(ds.factors(range(N))).numpy()
    out = tad(np.concatenate([2 * y, np.random.default_rng(0).normal(size=(N, 2))], 1), y)
    assert out["attrs"] == 10 and out["tad"] > 3.5  # one-hot shape attributes leave gaps of ~0.375
