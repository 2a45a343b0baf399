"""Summary statistics, confidence intervals and the paired test the report uses.

Every function takes plain arrays (or frames) and returns NaN, not an exception, where the
data cannot support the statistic (one fold, no pairs): a partial sweep still gets a report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.choices import CI_METHODS
from protocol import intervals

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
# Up to this many pairs without ties the Wilcoxon p-value is exact, as in scipy's default.
EXACT_WILCOXON_MAX_PAIRS = 50


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1, as pandas) and count; std is NaN below 2 values."""
    array = _finite(values)
    n = int(array.size)
    if n == 0:
        return math.nan, math.nan, 0
    return float(array.mean()), float(array.std(ddof=1)) if n > 1 else math.nan, n


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval for the mean of the finite values (protocol.intervals.t_interval); NaN
    below 2 of them (no spread to estimate)."""
    return intervals.t_interval(_finite(values), confidence)


def bootstrap_interval(
    values, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of the finite values (`scipy.stats.bootstrap`);
    seeded so a report is reproducible. NaN below 2 values."""
    array = _finite(values)
    if array.size < 2:
        return math.nan, math.nan
    result = scipy_stats.bootstrap((array,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                   method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def interval(values, method: str, confidence: float = CONFIDENCE) -> tuple[float, float]:
    if method == "t":
        return t_interval(values, confidence)
    if method == "bootstrap":
        return bootstrap_interval(values, confidence)
    raise ValueError(f"unknown confidence-interval method {method!r}; choose from {', '.join(CI_METHODS)}")


@dataclass(frozen=True)
class PairedTest:
    n_pairs: int
    statistic: float
    p_value: float
    median_difference: float  # median of (left - right) over the pairs
    note: str = ""
    approximate: bool = False  # normal approximation rather than the exact distribution


def wilcoxon_paired(
    left: pd.DataFrame, right: pd.DataFrame, on: Sequence[str] = ("image_id", "repetition"), value: str = "jaccard"
) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of `left[value]` against `right[value]`, rows paired on `on`.

    Only rows present on both sides count; a pair is one test image of one repetition, so
    repetitions that use different test splits never pair images across splits.
    """
    keys = list(on)
    pairs = left[keys + [value]].merge(right[keys + [value]], on=keys, suffixes=("_left", "_right"))
    pairs = pairs.dropna(subset=[f"{value}_left", f"{value}_right"])
    differences = (pairs[f"{value}_left"] - pairs[f"{value}_right"]).to_numpy(dtype=float)
    n = int(differences.size)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, "no paired images")
    median_difference = float(np.median(differences))
    if np.all(differences == 0):
        return PairedTest(n, math.nan, math.nan, median_difference, "all paired differences are zero")
    nonzero = np.abs(differences[differences != 0])
    exact = n <= EXACT_WILCOXON_MAX_PAIRS and nonzero.size == n and np.unique(nonzero).size == n
    # scipy's default swaps in a permutation test for small samples with ties or zeros, which
    # takes seconds per test; the normal approximation (with continuity correction) is used there.
    result = scipy_stats.wilcoxon(differences, alternative="two-sided", method="exact" if exact else "asymptotic")
    return PairedTest(n, float(result.statistic), float(result.pvalue), median_difference, approximate=not exact)
