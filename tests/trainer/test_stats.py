"""The gate's numbers: slices, the paired bootstrap and the baselines, on arrays whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from abalone_contract.constants import FEATURES, NUMERIC_FEATURES
from abalone_trainer.stats import SliceSpec, baseline_predictions, paired_bootstrap, regression_metrics


def test_regression_metrics_agree_with_their_definitions_and_mark_non_finite_predictions():
    scores = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert scores["mse"] == pytest.approx(4 / 3) and scores["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert scores["mae"] == pytest.approx(2 / 3) and scores["r2"] == pytest.approx(1 - 4 / 2)
    assert all(np.isnan(v) for v in regression_metrics(np.array([1.0, 2.0]), np.array([1.0, np.inf])).values())


def test_slices_cover_sex_and_age_bands():
    frame = pd.DataFrame({"Sex": ["M", "F", "I", "I", "M"], "Rings": [3, 7, 8, 11, 20]})
    masks = SliceSpec().masks(frame)
    assert {name: int(mask.sum()) for name, mask in masks.items()} == {
        "sex=M": 2,
        "sex=F": 1,
        "sex=I": 2,
        "rings<=7": 2,
        "rings=8-11": 2,
        "rings>=12": 1,
    }
    assert list(SliceSpec(by_sex=False, rings_bands=(9,)).masks(frame)) == ["rings<=9", "rings>=10"]
    assert SliceSpec(by_sex=False, rings_bands=()).masks(frame) == {}
    with pytest.raises(ValueError, match="increasing"):
        SliceSpec(rings_bands=(11, 7))


def test_the_paired_bootstrap_finds_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(1)
    y = rng.normal(10, 3, 800)
    shared = rng.normal(0, 2, 800)  # noise both models make: pairing cancels it
    better, worse = y + shared, y + shared + rng.normal(0, 1, 800)
    result = paired_bootstrap(y, better, worse, resamples=1000, seed=0)
    low, high = result["intervals"]["0.95"]
    assert result["rmse_diff"] < 0 and high < 0, "clearly better: the interval excludes zero"
    assert result["p_better"] == pytest.approx(1.0)
    twin = paired_bootstrap(y, better, better.copy(), resamples=1000, seed=0)
    assert twin["rmse_diff"] == pytest.approx(0.0, abs=0) and twin["intervals"]["0.99"] == [0.0, 0.0]
    errors = rng.normal(0, 2, 800)
    noisy = paired_bootstrap(y, y + errors, y - errors[::-1], resamples=1000, seed=0)  # equal RMSE, other rows
    low, high = noisy["intervals"]["0.95"]
    assert noisy["rmse_diff"] == pytest.approx(0) and low < 0 < high, "equally good: the interval straddles zero"
    widths = [noisy["intervals"][level][1] - noisy["intervals"][level][0] for level in ("0.8", "0.95", "0.99")]
    assert widths == sorted(widths)


def test_the_bootstrap_is_seeded_and_independent_of_its_block_size(monkeypatch):
    import abalone_trainer.stats as stats

    rng = np.random.default_rng(2)
    y, a, b = rng.normal(size=300), rng.normal(size=300), rng.normal(size=300)
    first = paired_bootstrap(y, a, b, resamples=700, seed=5)
    assert paired_bootstrap(y, a, b, resamples=700, seed=5) == first
    assert paired_bootstrap(y, a, b, resamples=700, seed=6) != first
    monkeypatch.setattr(stats, "BLOCK", 700)
    assert paired_bootstrap(y, a, b, resamples=700, seed=5)["rmse_diff"] == first["rmse_diff"]


def test_nan_predictions_give_nan_differences():
    y = np.arange(5.0)
    result = paired_bootstrap(y, np.full(5, np.nan), y, resamples=100)
    assert np.isnan(result["rmse_diff"]) and all(np.isnan(v) for v in result["intervals"]["0.95"])


def test_baselines_are_fitted_on_training_rows_only():
    rng = np.random.default_rng(3)
    train = pd.DataFrame({name: rng.uniform(0.1, 1, 200) for name in NUMERIC_FEATURES})
    train["Sex"] = rng.choice(["M", "F", "I"], 200)
    train["Rings"] = 3 + 10 * train["Shell_weight"] + (train["Sex"] == "I") * -2
    test = train.sample(50, random_state=0)[list(FEATURES)].copy()
    test["Rings"] = 100.0  # labels of the test rows must not move either baseline
    predictions = baseline_predictions(train, test)
    assert predictions["mean"] == pytest.approx(np.full(50, train["Rings"].mean()))
    expected = 3 + 10 * test["Shell_weight"] + (test["Sex"] == "I") * -2
    assert predictions["linear"] == pytest.approx(expected.to_numpy(), abs=1e-9)
