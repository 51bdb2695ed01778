"""Means that stay finite where a plain sum would leave the float range, and the k3 KL
estimate [ESPO-METRICS] [BASE-METRICS], which saturates at the largest float64.

Every function first takes the plain value (the arithmetic the golden vectors were made
with) and only where that is not finite falls back to a scaled form, so results that fit the
float range are unchanged.
"""

from __future__ import annotations

import math

import numpy as np


FLOAT64_MAX = float(np.finfo(np.float64).max)
LOG_FLOAT64_MAX = math.log(FLOAT64_MAX)


def scaled_sum(values: np.ndarray, count) -> np.ndarray:
    """[ESPO-METRICS] ``values / count`` elementwise: summed, these give the mean without the overflow of
    ``sum(values) / count`` (each term is at most max|v| / count)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return values / count


def in_range(mean):
    """[ESPO-INPUT] A mean of finite values summed scaled is within rounding of the true mean,
    which lies in [min, max] of the values: an inf there is the rounding of +-max float64."""
    return np.clip(mean, -FLOAT64_MAX, FLOAT64_MAX)


def finite_mean(plain: float, values: np.ndarray, where: np.ndarray) -> float:
    """[ESPO-METRICS] The mean of ``values`` over ``where``: ``plain`` (the caller's sum / count)
    when finite, else the sum of values / count (finite for finite values)."""
    if math.isfinite(plain):
        return plain
    count = int(where.sum())
    picked = values[where]
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.sum(scaled_sum(picked, count))
    # the clip to +-max holds for finite values only (an inf k3 is left to approx_kl)
    return float(in_range(mean) if np.isfinite(picked).all() else mean)


def k3(log_r: np.ndarray) -> np.ndarray:
    """[ESPO-METRICS] (r - 1) - log r = expm1(log r) - log r per token (inf beyond the float range)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.expm1(log_r) - log_r


def log_k3(log_r: np.ndarray) -> np.ndarray:
    """[ESPO-METRICS] log((r - 1) - log r), finite for every finite log r but 0 (k3 = 0: -inf)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        large = log_r > 700.0
        return np.where(large, log_r + np.log1p(-(1.0 + log_r) * np.exp(-log_r)), np.log(k3(log_r)))


def approx_kl(plain: float, log_r: np.ndarray, mask: np.ndarray) -> float:
    """[ESPO-METRICS] [BASE-METRICS] ``approx_kl``, the token mean of (r - 1) - log r over the
    response tokens: ``plain`` when finite, else computed in log space (log-sum-exp of log k3,
    minus log N_tok). A mean beyond the float64 range is reported as the largest float64: a
    diagnostic never fails a loss that the clamp keeps finite, and is never inf."""
    if math.isfinite(plain):
        return plain
    logs = np.where(mask, log_k3(log_r), -np.inf)
    top = float(logs.max())
    log_mean = top + math.log(float(np.sum(np.exp(logs - top)))) - math.log(int(mask.sum()))
    return saturated_exp(log_mean)


def saturated_exp(log_value: float) -> float:
    """[ESPO-METRICS] exp(log_value), or the largest float64 where that is beyond its range."""
    if log_value < LOG_FLOAT64_MAX:
        value = math.exp(log_value)
        if math.isfinite(value):
            return value
    return FLOAT64_MAX
