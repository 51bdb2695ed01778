"""Finite means and the k3 KL estimate beyond the float range (saturating at the largest
float64) [ESPO-METRICS] [BASE-METRICS]; torch mirror of espo_ref/_stable.py.

The metrics are summed in float64 on the device and fetched in one transfer; only when a
mean is not finite do these fallbacks run (another sync, on inputs far outside any
training regime).
"""

from __future__ import annotations

import math

import torch

from .._stable import saturated_exp
from ._segments import in_range


def finite_mean(plain: float, values: torch.Tensor, where: torch.Tensor) -> float:
    """[ESPO-METRICS] The mean of ``values`` over ``where``: ``plain`` when finite, else the
    float64 sum of value / count (the core's fallback)."""
    if math.isfinite(plain):
        return plain
    count = int(torch.count_nonzero(where))
    v = torch.where(where, values.detach().to(torch.float64), torch.zeros((), dtype=torch.float64,
                                                                           device=values.device))
    mean = (v / count).sum()
    # the clip to +-max holds for finite values only (an inf k3 is left to approx_kl)
    return float(in_range(mean) if bool(torch.isfinite(v).all()) else mean)


def k3(log_r: torch.Tensor) -> torch.Tensor:
    """[ESPO-METRICS] (r - 1) - log r = expm1(log r) - log r per token (inf beyond the float range)."""
    return torch.expm1(log_r) - log_r


def log_k3(log_r: torch.Tensor) -> torch.Tensor:
    """[ESPO-METRICS] log((r - 1) - log r), finite for every finite log r but 0 (k3 = 0: -inf)."""
    large = log_r > 700.0
    return torch.where(large, log_r + torch.log1p(-(1.0 + log_r) * torch.exp(-log_r)), torch.log(k3(log_r)))


def approx_kl(plain: float, log_r: torch.Tensor, mask: torch.Tensor) -> float:
    """[ESPO-METRICS] [BASE-METRICS] ``approx_kl``: ``plain`` when finite, else computed in log
    space from the float64 raw log-ratio ``log_r`` (a tensor, or a callable giving it: only
    computed here); beyond float64 the largest float64 (the core's rule: finite, never inf)."""
    if math.isfinite(plain):
        return plain
    log_r = (log_r() if callable(log_r) else log_r).detach().to(torch.float64)
    logs = torch.where(mask, log_k3(log_r), torch.full((), -math.inf, dtype=log_r.dtype, device=log_r.device))
    top = float(logs.max())
    log_mean = top + math.log(float(torch.exp(logs - top).sum())) - math.log(int(torch.count_nonzero(mask)))
    return saturated_exp(log_mean)
