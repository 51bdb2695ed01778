"""Diagnostics: ESPO's metrics (Figs. 3-5) [ESPO-METRICS] and the baselines' [BASE-METRICS],
built on the same counts and means so that a key means the same thing in both."""

from __future__ import annotations

import math

import numpy as np

from ._segments import Segments
from ._stable import approx_kl, finite_mean, in_range
from .config import ESPOConfig
from .errors import ESPOInputError
from .grouping import HIGH_GROUP


#: the order in which espo_metrics reports its keys
ESPO_METRIC_KEYS = (
    "tokens", "responses", "clipfrac", "clipfrac_high", "clipfrac_low", "clipfrac_high_group",
    "clipfrac_low_group", "clamped_frac", "eps_mean_high_group", "eps_mean_low_group",
    "high_group_tokens", "low_group_tokens", "trained_tokens", "groups_mean", "entropy_mean",
    "entropy_mean_high_group", "entropy_mean_low_group", "ratio_mean", "approx_kl",
)


def safe_mean(values: np.ndarray, where: np.ndarray, *, zero_filled: bool = False) -> float:
    """[ESPO-METRICS] [BASE-METRICS] The mean of ``values`` over ``where`` (0 when empty),
    finite for finite values: summed scaled where the plain sum leaves the float range.

    ESPO sums the selected values; the baselines (``zero_filled=True``) sum the [B, T] array
    with zeros outside ``where``, as the peers' masked mean does. The two sums may round
    differently in the last bit; the golden vectors hold each."""
    count = int(where.sum())
    if not count:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.where(where, values, 0.0).sum() if zero_filled else values[where].sum()
        plain = float(total / count)
    return finite_mean(plain, values, where)


def clip_metrics(mask, ratio, ratio_over, log_r, clipped_high, clipped_low, clamped, *,
                 zero_filled: bool = False) -> dict[str, float]:
    """[ESPO-METRICS] [BASE-METRICS] The keys every loss reports: token and response counts,
    clip fractions over all response tokens, the clamped fraction, the mean ratio over
    ``ratio_over`` and the k3 ``approx_kl`` of the raw log-ratio (saturating at the largest
    float64, never inf)."""
    tokens = int(mask.sum())
    with np.errstate(over="ignore", invalid="ignore"):
        kl = np.where(mask, np.expm1(log_r) - log_r, 0.0)
    return {
        "tokens": float(tokens),
        "responses": float(mask.any(axis=1).sum()),
        "clipfrac": float((clipped_high | clipped_low).sum() / tokens),
        "clipfrac_high": float(clipped_high.sum() / tokens),
        "clipfrac_low": float(clipped_low.sum() / tokens),
        "clamped_frac": float((clamped & mask).sum() / tokens),
        "ratio_mean": safe_mean(ratio, ratio_over, zero_filled=zero_filled),
        "approx_kl": approx_kl(safe_mean(kl, mask, zero_filled=zero_filled), log_r, mask),
    }


def espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                 clipped_low, clamped, config: ESPOConfig) -> dict[str, float]:
    """[ESPO-METRICS] Diagnostics of Figs. 3-5: clip fractions over all response tokens,
    split into the high-entropy bucket (group 0) and the rest, and per-group epsilons.

    Every value is finite: a mean whose plain sum leaves the float range is summed scaled,
    ``approx_kl`` falls back to log space and saturates at the largest float64."""
    k = Segments(groups, trained).groups_per_row()
    return _espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                         clipped_low, clamped, config, k)


def _espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                  clipped_low, clamped, config: ESPOConfig, k) -> dict[str, float]:
    clipped = (clipped_high | clipped_low).astype(np.float64)
    high = mask & (groups == HIGH_GROUP) if config.grouping != "token" else mask.copy()
    low = mask & ~high
    rows = mask.any(axis=1)
    common = clip_metrics(mask, ratio, trained, log_r, clipped_high, clipped_low, clamped)
    by_group = {
        "clipfrac_high_group": safe_mean(clipped, high),
        "clipfrac_low_group": safe_mean(clipped, low),
        "eps_mean_high_group": safe_mean(eps_high, high),
        "eps_mean_low_group": safe_mean(eps_high, low),
        "high_group_tokens": float(high.sum()),
        "low_group_tokens": float(low.sum()),
        "trained_tokens": float(trained.sum()),
        "groups_mean": float(k[rows].mean()),
        "entropy_mean": safe_mean(entropy, mask),
        "entropy_mean_high_group": safe_mean(entropy, high),
        "entropy_mean_low_group": safe_mean(entropy, low),
    }
    return {key: common[key] if key in common else by_group[key] for key in ESPO_METRIC_KEYS}


def baseline_metrics(mask, ratio, log_r, clipped_high, clipped_low, clamped) -> dict[str, float]:
    """[BASE-METRICS] Clip fractions over all response tokens (TRL's binding definitions),
    the mean ratio, and the KL estimates of the raw log-ratio (k3 ``approx_kl``, k1 ``ppo_kl``).
    Every value is finite: means are summed scaled where a plain sum would overflow, and the
    k3 mean saturates at the largest float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        neg_log_r = -log_r
    return {**clip_metrics(mask, ratio, mask, log_r, clipped_high, clipped_low, clamped, zero_filled=True),
            "ppo_kl": safe_mean(neg_log_r, mask, zero_filled=True)}


#: metrics that are counts: a step's value is the sum over its micro-batches
COUNT_KEYS = ("tokens", "responses", "high_group_tokens", "low_group_tokens", "trained_tokens")
#: the count each fraction or mean is taken over (any other key is over ``tokens``)
DENOMINATORS = {
    "clipfrac_high_group": "high_group_tokens", "eps_mean_high_group": "high_group_tokens",
    "entropy_mean_high_group": "high_group_tokens", "clipfrac_low_group": "low_group_tokens",
    "eps_mean_low_group": "low_group_tokens", "entropy_mean_low_group": "low_group_tokens",
    "groups_mean": "responses",
}


def _denominator(key: str, keys) -> str:
    """[ESPO-METRICS] [BASE-METRICS] The count key ``key`` is a fraction or mean of: the trained
    tokens for ESPO's ``ratio_mean`` (the baselines train every token), else ``DENOMINATORS``,
    else the response tokens."""
    if key == "ratio_mean":
        return "trained_tokens" if "trained_tokens" in keys else "tokens"
    return DENOMINATORS.get(key, "tokens")


def merge_metrics(parts) -> dict[str, float]:
    """[ESPO-METRICS] [BASE-METRICS] The metrics of one optimizer step from those of its
    micro-batches (each a loss's ``metrics``): counts are summed, every fraction and mean is
    weighted by its count (so it is the value over all the step's tokens), and a part whose
    count is 0 (an empty bucket) is left out of that average instead of entering it as 0.
    A value whose count is 0 in every part is the parts' value for an empty set.

    Equal, up to rounding, to the metrics of the micro-batches' tokens taken as one batch,
    for every grouping that is decided per response."""
    parts = [dict(p) for p in parts]
    if not parts:
        raise ESPOInputError("merge_metrics needs the metrics of at least one micro-batch, got none")
    keys = list(parts[0])
    for i, part in enumerate(parts):
        if list(part) != keys:
            raise ESPOInputError(f"parts[{i}] has other metric keys than parts[0]: the parts must come from one loss")
    merged = {}
    for key in keys:
        if key in COUNT_KEYS:
            merged[key] = float(sum(p[key] for p in parts))
            continue
        count = _denominator(key, keys)
        if count not in keys:
            raise ESPOInputError(f"metric {key!r} is a mean over {count!r}, which the parts do not report")
        weights = [p[count] for p in parts]
        total = sum(weights)
        if not total:
            merged[key] = parts[0][key]
            continue
        shares = [w / total * p[key] for w, p in zip(weights, parts) if w]
        if all(math.isfinite(s) for s in shares):  # each share is at most max|v|: a finite (clipped) mean
            merged[key] = float(in_range(math.fsum(shares)))
        else:  # a part reported a non-finite value: the step's value says so
            merged[key] = float(sum(shares))
    return merged
