"""Diagnostics: ESPO's metrics (Figs. 3-5) [ESPO-METRICS] and the baselines' [BASE-METRICS];
torch mirror of espo_ref/metrics.py.

Python floats: every count and sum is computed on the device and all of them cross to the
host in one transfer (one sync). Every value is finite: a mean whose sum leaves the range of
the dtype is summed again in float64, scaled, and ``approx_kl`` falls back to log space from
the float64 raw log-ratio and saturates at the largest float64. The fallbacks cost more
syncs, only when a sum is not finite.
"""

from __future__ import annotations

import torch

from ..config import ESPOConfig
from ..grouping import HIGH_GROUP
from ..metrics import ESPO_METRIC_KEYS
from ._segments import Segments
from ._stable import approx_kl, finite_mean, k3
from .surrogate import _zero


def raw_log_ratio(lp: torch.Tensor, olp: torch.Tensor, mask: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """[ESPO-METRICS] logp - old_logp in float64 for the metrics, as the core computes it (the float64
    difference of the inputs, not the float32 one), detached; 0 on padding."""
    if log_r.dtype == torch.float64:
        return log_r.detach()
    return torch.where(mask, lp.detach().to(torch.float64) - olp.to(torch.float64),
                       torch.zeros((), dtype=torch.float64, device=lp.device))


def _total(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    # a product is exact and faster than where().sum() on CPU; values are finite off ``where``
    return (values * where).sum()


def _fetch(counts: dict[str, torch.Tensor], sums: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Named counts and sums from the device in one transfer (one sync)."""
    host = torch.cat([torch.stack(list(counts.values())).to(torch.float64),
                      torch.stack(list(sums.values())).to(torch.float64)]).tolist()
    return dict(zip(counts, (int(x) for x in host[:len(counts)]))), dict(zip(sums, host[len(counts):]))


def _clip_tensors(mask, ratio, ratio_over, kl, clipped_high, clipped_low, clamped):
    """[ESPO-METRICS] [BASE-METRICS] The device counts and sums behind the keys every loss reports."""
    count = torch.count_nonzero  # exact, and faster than a bool .sum() (which copies to int64)
    counts = {
        "tokens": count(mask), "responses": count(mask.any(dim=1)), "clip": count(clipped_high | clipped_low),
        "clip_high": count(clipped_high), "clip_low": count(clipped_low), "clamped": count(clamped & mask),
        "ratio_over": count(ratio_over),
    }
    sums = {"ratio": _total(ratio, ratio_over), "kl": _total(kl, mask)}
    return counts, sums


def _clip_values(n: dict, s: dict, mask, ratio, ratio_over, kl, raw_log_r) -> dict[str, float]:
    """[ESPO-METRICS] [BASE-METRICS] The keys every loss reports, from the fetched counts and sums."""
    tokens = n["tokens"]

    def frac(num):  # a batch without tokens is rejected upstream unless validate=False
        return num / tokens if tokens else float("nan")

    return {
        "tokens": float(tokens),
        "responses": float(n["responses"]),
        "clipfrac": frac(n["clip"]),
        "clipfrac_high": frac(n["clip_high"]),
        "clipfrac_low": frac(n["clip_low"]),
        "clamped_frac": frac(n["clamped"]),
        "ratio_mean": mean(s["ratio"], n["ratio_over"], ratio, ratio_over),
        "approx_kl": approx_kl(mean(s["kl"], tokens, kl, mask), raw_log_r, mask),
    }


def mean(total: float, count: int, values: torch.Tensor, where: torch.Tensor) -> float:
    """[ESPO-METRICS] [BASE-METRICS] ``total / count`` (0 when empty), finite: summed again in
    float64, scaled, when the device sum left the dtype's range."""
    return finite_mean(total / count, values, where) if count else 0.0


def espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                 clipped_low, clamped, config: ESPOConfig) -> dict[str, float]:
    """[ESPO-METRICS] Diagnostics of Figs. 3-5: clip fractions over all response tokens,
    split into the high-entropy bucket (group 0) and the rest, and per-group epsilons.

    Python floats fetched in one sync; finite (see the module docstring). ``approx_kl``'s
    log-space fallback uses ``log_r`` in float64.
    """
    k = Segments(groups, trained).groups_per_row()
    return _espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                         clipped_low, clamped, config, k, raw_log_r=lambda: log_r)


def _espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                  clipped_low, clamped, config: ESPOConfig, k, *, raw_log_r) -> dict[str, float]:
    clipped = clipped_high | clipped_low
    high = mask & (groups == HIGH_GROUP) if config.grouping != "token" else mask
    low = mask & ~high
    rows = mask.any(dim=1)
    log_r = log_r.detach()
    kl = torch.where(mask, k3(log_r), _zero(log_r))
    counts, sums = _clip_tensors(mask, ratio, trained, kl, clipped_high, clipped_low, clamped)
    count = torch.count_nonzero
    counts.update({"clip_in_high": count(clipped & high), "high": count(high), "clip_in_low": count(clipped & low),
                   "low": count(low), "k_sum": (k * rows).sum()})
    sums.update({"eps_high": _total(eps_high, high), "eps_low": _total(eps_high, low),
                 "entropy": _total(entropy, mask), "entropy_high": _total(entropy, high),
                 "entropy_low": _total(entropy, low)})
    n, s = _fetch(counts, sums)
    common = _clip_values(n, s, mask, ratio, trained, kl, raw_log_r)
    by_group = {
        "clipfrac_high_group": n["clip_in_high"] / n["high"] if n["high"] else 0.0,
        "clipfrac_low_group": n["clip_in_low"] / n["low"] if n["low"] else 0.0,
        "eps_mean_high_group": mean(s["eps_high"], n["high"], eps_high, high),
        "eps_mean_low_group": mean(s["eps_low"], n["low"], eps_high, low),
        "high_group_tokens": float(n["high"]),
        "low_group_tokens": float(n["low"]),
        "trained_tokens": float(n["ratio_over"]),  # the ratio's mean is over the trained tokens
        "groups_mean": n["k_sum"] / n["responses"] if n["responses"] else float("nan"),
        "entropy_mean": mean(s["entropy"], n["tokens"], entropy, mask),
        "entropy_mean_high_group": mean(s["entropy_high"], n["high"], entropy, high),
        "entropy_mean_low_group": mean(s["entropy_low"], n["low"], entropy, low),
    }
    return {key: common[key] if key in common else by_group[key] for key in ESPO_METRIC_KEYS}


def baseline_metrics(mask, ratio, log_r, clipped_high, clipped_low, clamped, *,
                     extra_counts: dict[str, torch.Tensor] | None = None, raw_log_r=None) -> dict[str, float]:
    """[BASE-METRICS] Clip fractions over all response tokens (TRL's binding definitions),
    the mean ratio, and the KL estimates of the raw log-ratio (k3 ``approx_kl``, k1 ``ppo_kl``).

    ``extra_counts`` (keyword-only): more token counts, reported as fractions of N_tok after
    the common keys (``clipfrac_dual``, ``capped_frac``), fetched in the same single
    device-to-host transfer. Python floats, computed in the dtype of ``ratio``. Finite (see
    the module docstring); ``raw_log_r`` (keyword-only) is a callable giving the float64 raw
    log-ratio for ``approx_kl``'s fallback (default ``log_r``).
    """
    extra_counts = extra_counts or {}
    ratio = ratio.detach()
    log_r = log_r.detach()
    kl = torch.where(mask, k3(log_r), _zero(log_r))
    neg_log_r = torch.where(mask, -log_r, _zero(log_r))
    counts, sums = _clip_tensors(mask, ratio, mask, kl, clipped_high, clipped_low, clamped)
    counts.update({f"extra:{name}": torch.count_nonzero(c) for name, c in extra_counts.items()})
    sums["neg_log_r"] = neg_log_r.sum()
    n, s = _fetch(counts, sums)
    metrics = _clip_values(n, s, mask, ratio, mask, kl, raw_log_r if raw_log_r is not None else log_r)
    metrics["ppo_kl"] = mean(s["neg_log_r"], n["tokens"], neg_log_r, mask)
    for name in extra_counts:
        metrics[name] = n[f"extra:{name}"] / n["tokens"] if n["tokens"] else float("nan")
    return metrics
