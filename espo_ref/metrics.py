"""Diagnostics: ESPO's metrics (Figs. 3-5) [ESPO-METRICS] and the baselines' [BASE-METRICS],
built on the same counts and means so that a key means the same thing in both."""

from __future__ import annotations

import numpy as np

from ._segments import Segments
from ._stable import approx_kl, finite_mean
from .config import ESPOConfig
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
