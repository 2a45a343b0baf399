"""Student-t confidence intervals for a mean (the selection guards' one-sided lower bound, the
report's two-sided intervals). No torch: numpy and scipy only."""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as scipy_stats


def t_interval(values, confidence: float, alternative: str = "two-sided") -> tuple[float, float]:
    """`scipy.stats.ttest_1samp`'s interval for the mean of `values` at `confidence`: two-sided,
    or with alternative="greater" the one-sided (lower bound, inf). NaN below 2 values (no spread
    to estimate); a NaN among the values gives NaN (drop them first where they mean "missing")."""
    array = np.asarray(values, dtype=float).ravel()
    if array.size < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # Identical values: scipy warns of precision loss in the t statistic; the interval is the mean.
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = scipy_stats.ttest_1samp(array, 0.0, alternative=alternative).confidence_interval(confidence)
    return float(ci.low), float(ci.high)
