"""Linear probes against scikit-learn and scipy: AP, regression R² / Pearson r / MSE, and the training protocol."""

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.linear_model import LinearRegression
from sklearn.metrics import average_precision_score, mean_squared_error, r2_score

from dbae_core.metrics import (
    ProbeConfig,
    average_precision,
    mean_average_precision,
    probe_attributes,
    probe_classes,
    probe_regression,
)

FAST = ProbeConfig(min_steps=300)  # for runs whose result does not depend on convergence


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < rng.uniform(0.05, 0.6)
    y[0] = True
    scores = np.round(rng.normal(size=300) + 1.5 * y, 1)  # rounding makes many ties
    assert average_precision(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_mean_average_precision_skips_columns_without_positives():
    rng = np.random.default_rng(0)
    y = rng.random((100, 3)) < 0.3
    y[:, 2] = False
    s = rng.normal(size=(100, 3))
    mean, per = mean_average_precision(y, s)
    assert np.isnan(per[2])
    assert mean == pytest.approx(np.mean([average_precision_score(y[:, k], s[:, k]) for k in range(2)]))


def _attribute_data(n, d=16, k=4, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(np.float32)
    z = rng.normal(size=(n, d))
    z[:, :k] += signal * y
    return z.astype(np.float32), y


def test_attribute_probe_reports_sklearn_ap_of_its_scores():
    z, y = _attribute_data(1200)
    out = probe_attributes(z[:900], y[:900], z[900:], y[900:])
    ref = np.mean([average_precision_score(y[900:, k], out["scores"][:, k]) for k in range(y.shape[1])])
    assert out["ap"] == pytest.approx(ref, abs=1e-12)
    assert out["ap"] > 0.95 and 1 <= out["best_epoch"] <= ProbeConfig().epochs_for(810)
    noise = probe_attributes(np.random.default_rng(1).normal(size=(1200, 16)), y, z[900:], y[900:], cfg=FAST)
    assert noise["ap"] < 0.6  # chance level is the base rate, 0.4


def test_attribute_probe_keeps_the_best_validation_epoch_and_is_deterministic():
    z, y = _attribute_data(600, signal=0.7, seed=3)
    short = probe_attributes(z[:400], y[:400], z[400:], y[400:], cfg=ProbeConfig(epochs=2, min_steps=0))
    long = probe_attributes(z[:400], y[:400], z[400:], y[400:], cfg=ProbeConfig(epochs=15, min_steps=0))
    assert long["val_ap"] >= short["val_ap"]  # the best of 15 epochs includes the first two
    assert 1 <= long["best_epoch"] <= 15
    again = probe_attributes(z[:400], y[:400], z[400:], y[400:], cfg=ProbeConfig(epochs=15, min_steps=0))
    assert again["ap"] == long["ap"] and again["best_epoch"] == long["best_epoch"]
    given = probe_attributes(z[:300], y[:300], z[400:], y[400:], z_val=z[300:400], y_val=y[300:400])
    assert 0 < given["ap"] <= 1


def test_epochs_follow_the_protocol_at_celeba_size_and_reach_min_steps_on_small_sets():
    cfg = ProbeConfig()
    assert cfg.epochs_for(162_770) == 15  # CelebA train: 1,272 steps an epoch
    assert cfg.epochs_for(900) == 250  # 8 steps an epoch → 2,000 steps
    assert ProbeConfig(min_steps=0).epochs_for(900) == 15


def test_regression_probe_equals_sklearn_linear_regression():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 12)) * rng.uniform(0.1, 5, 12) + rng.normal(size=12)
    w = rng.normal(size=(12, 3))
    y = z @ w + rng.normal(size=(500, 3)) * np.array([0.5, 2.0, 5.0])
    out = probe_regression(z[:400], y[:400], z[400:], y[400:])
    pred = LinearRegression().fit(z[:400], y[:400]).predict(z[400:])
    assert out["r2"] == pytest.approx(r2_score(y[400:], pred), abs=1e-6)
    assert out["mse"] == pytest.approx(mean_squared_error(y[400:], pred), rel=1e-6)
    assert out["pearson"] == pytest.approx(np.mean([pearsonr(y[400:, k], pred[:, k])[0] for k in range(3)]), abs=1e-6)


def test_class_probe_separates_blobs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 800)
    z = rng.normal(size=(800, 8)) + 4 * np.eye(8)[labels]
    out = probe_classes(z[:600], labels[:600], z[600:], labels[600:])
    assert out["accuracy"] > 0.95
    chance = probe_classes(rng.normal(size=(600, 8)), labels[:600], z[600:], labels[600:], cfg=FAST)
    assert chance["accuracy"] < 0.45


def test_class_probe_ap_is_macro_one_vs_rest_ap():
    """The class AP equals sklearn's macro average precision of the one-hot labels against the softmax scores;
    separable blobs give AP near 1, random latents AP near the class prevalence (1/4)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 800)
    z = rng.normal(size=(800, 8)) + 1.5 * np.eye(8)[labels]  # overlapping: AP clearly below 1
    out = probe_classes(z[:600], labels[:600], z[600:], labels[600:], cfg=FAST)
    ref = average_precision_score(np.eye(4)[labels[600:]], out["scores"], average="macro")
    assert out["ap"] == pytest.approx(ref, abs=1e-9)
    assert 0.6 < out["ap"] < 0.99
    chance = probe_classes(rng.normal(size=(600, 8)), labels[:600], z[600:], labels[600:], cfg=FAST)
    assert chance["ap"] < 0.4
