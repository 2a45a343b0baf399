"""Confidence intervals and the paired test, on cases whose answers are known independently."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis.stats import bootstrap_interval, interval, mean_std, t_interval, wilcoxon_paired


def test_mean_std_matches_pandas_and_ignores_missing_values():
    values = [0.91, 0.95, np.nan, 0.88, 0.97]
    mean, std, n = mean_std(values)
    series = pd.Series(values)
    assert (mean, n) == (pytest.approx(series.mean()), 4)
    assert std == pytest.approx(series.std())
    assert math.isnan(mean_std([0.9])[1])
    assert mean_std([])[2] == 0


def test_t_interval_is_the_textbook_interval():
    values = np.array([95.1, 96.3, 95.8, 96.0, 95.2])
    low, high = t_interval(values)
    expected = scipy_stats.t.interval(0.95, df=4, loc=values.mean(), scale=scipy_stats.sem(values))
    assert (low, high) == pytest.approx(expected)
    assert all(math.isnan(v) for v in t_interval([95.0]))


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(3).normal(88, 9, 40)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high
    assert bootstrap_interval(values) == (low, high)
    # Roughly the normal-theory width for a sample this size.
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.2)


def test_unknown_interval_method_is_refused():
    with pytest.raises(ValueError, match="bootstrap"):
        interval([1.0, 2.0], "bayes")


def test_wilcoxon_pairs_on_image_and_repetition_not_on_row_order():
    rng = np.random.default_rng(0)
    left = pd.DataFrame({"image_id": [f"im{i % 10}" for i in range(20)], "repetition": [i // 10 for i in range(20)],
                         "jaccard": rng.uniform(0.8, 0.95, 20)})
    right = left.assign(jaccard=left["jaccard"] - rng.uniform(0.0, 0.05, 20)).sample(frac=1, random_state=1)
    right = pd.concat([right, pd.DataFrame({"image_id": ["extra"], "repetition": [0], "jaccard": [0.1]})])
    test = wilcoxon_paired(left, right)
    ordered = right.iloc[:-1].set_index(["image_id", "repetition"]).loc[
        list(zip(left.image_id, left.repetition)), "jaccard"].to_numpy()
    assert test.n_pairs == 20
    assert test.p_value == pytest.approx(scipy_stats.wilcoxon(left["jaccard"].to_numpy(), ordered).pvalue)
    assert test.median_difference > 0


def test_wilcoxon_without_pairs_or_differences_gives_no_p_value():
    frame = pd.DataFrame({"image_id": ["a", "b"], "repetition": [0, 0], "jaccard": [0.9, 0.8]})
    assert wilcoxon_paired(frame, frame.iloc[0:0]).n_pairs == 0
    same = wilcoxon_paired(frame, frame)
    assert same.n_pairs == 2 and math.isnan(same.p_value) and "zero" in same.note
