"""Diagnostics: ESPO's metrics (Figs. 3-5) [ESPO-METRICS] and the baselines' [BASE-METRICS];
torch mirror of espo_ref/metrics.py.

A loss builds its metrics as device totals (token counts and sums) without a host sync or a
data-dependent branch, so that the loss compiles to one graph and a training step never waits
on them. ``DeviceMetrics`` is a mapping of Python floats: the totals cross to the host in one
transfer the first time a value is read. Totals of several micro-batches add up on the device
(``merge_metrics``), which gives the step's token-weighted values.

Every value is finite: a mean whose device sum left the range of the dtype is summed again in
float64, scaled, and ``approx_kl`` falls back to log space from the float64 raw log-ratio and
saturates at the largest float64. The fallbacks run on the host when a value is read, only
when a sum is not finite.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence

import torch

from ..config import ESPOConfig
from ..errors import ESPOInputError
from ..grouping import HIGH_GROUP
from ..metrics import ESPO_METRIC_KEYS
from ..metrics import merge_metrics as core_merge
from ._segments import Segments, factor
from ._stable import approx_kl, finite_mean, k3
from .surrogate import _zero

#: the keys every loss reports, before ESPO's and the baselines' own
COMMON_KEYS = ("tokens", "responses", "clipfrac", "clipfrac_high", "clipfrac_low", "clamped_frac", "ratio_mean",
               "approx_kl")
BASELINE_KEYS = (*COMMON_KEYS, "ppo_kl")
_NAN = float("nan")

# How each key is read from the totals: ("count", n) | ("frac", num, den, value when den is 0) |
# ("mean", sum, count, source values, source where). A mean of an empty set
# is 0; a fraction of no tokens is NaN (a batch without tokens is rejected unless validate=False).
_COMMON = {
    "tokens": ("count", "tokens"),
    "responses": ("count", "responses"),
    "clipfrac": ("frac", "clip", "tokens", _NAN),
    "clipfrac_high": ("frac", "clip_high", "tokens", _NAN),
    "clipfrac_low": ("frac", "clip_low", "tokens", _NAN),
    "clamped_frac": ("frac", "clamped", "tokens", _NAN),
    "ratio_mean": ("mean", "ratio", "trained", "ratio", "trained"),
    "approx_kl": ("mean", "kl", "tokens", "log_r", "mask"),  # its fallback: log space (``_fallback``)
}
_ESPO = {
    **_COMMON,
    "clipfrac_high_group": ("frac", "clip_in_high", "high", 0.0),
    "clipfrac_low_group": ("frac", "clip_in_low", "low", 0.0),
    "eps_mean_high_group": ("mean", "eps_high", "high", "eps", "high"),
    "eps_mean_low_group": ("mean", "eps_low", "low", "eps", "low"),
    "high_group_tokens": ("count", "high"),
    "low_group_tokens": ("count", "low"),
    "trained_tokens": ("count", "trained"),  # the ratio's mean is over the trained tokens
    "groups_mean": ("frac", "k_sum", "responses", _NAN),
    "entropy_mean": ("mean", "entropy", "tokens", "entropy", "mask"),
    "entropy_mean_high_group": ("mean", "entropy_high", "high", "entropy", "high"),
    "entropy_mean_low_group": ("mean", "entropy_low", "low", "entropy", "low"),
}
_BASELINE = {**_COMMON, "ppo_kl": ("mean", "neg_log_r", "tokens", "neg_log_r", "mask")}


def raw_log_ratio(lp: torch.Tensor, olp: torch.Tensor, mask: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """[ESPO-METRICS] logp - old_logp in float64 for the metrics, as the core computes it (the float64
    difference of the inputs, not the float32 one), detached; 0 on padding."""
    if log_r.dtype == torch.float64:
        return log_r.detach()
    return torch.where(mask, lp.detach().to(torch.float64) - olp.to(torch.float64),
                       torch.zeros((), dtype=torch.float64, device=lp.device))


class DeviceMetrics(MutableMapping):
    """[ESPO-METRICS] [BASE-METRICS] A loss's metrics: a mapping of key to Python float.

    Held as one float64 vector of counts and sums on the device; the first read of any key
    fetches it in one transfer (one sync) and computes every value on the host. Setting a key
    overrides its value. ``merge_metrics`` adds the totals of several results.
    """

    def __init__(self, recipes: dict, keys: tuple[str, ...], names: tuple[str, ...], totals: torch.Tensor, *,
                 sources: dict | None = None, parts: tuple = (), values: dict[str, float] | None = None):
        """``totals``: the float64 vector of the counts and sums ``names``; ``sources``: the
        tensors the fallbacks read; ``parts``: the merged metrics; ``values``: metrics already on
        the host (they count as set by hand)."""
        self._recipes = recipes
        self._keys = keys
        self._names = names
        self._totals = totals
        self._sources = sources or {}
        self._parts = parts
        self._values = values
        self._overridden = values is not None

    @classmethod
    def of_totals(cls, recipes: dict, keys: tuple[str, ...], totals: dict[str, torch.Tensor],
                  sources: dict) -> "DeviceMetrics":
        """A loss's metrics from its named device counts and sums (stacked: one transfer later)."""
        return cls(recipes, keys, tuple(totals), torch.stack([t.to(torch.float64) for t in totals.values()]),
                   sources=sources)

    # -- the mapping --------------------------------------------------------------------------
    def __getitem__(self, key: str) -> float:
        return self._host()[key]

    def __setitem__(self, key: str, value: float) -> None:
        self._host()[key] = value
        self._overridden = True

    def __delitem__(self, key: str) -> None:
        del self._host()[key]
        self._overridden = True

    def __iter__(self):
        return iter(self._host())

    def __len__(self) -> int:
        return len(self._host())

    def __repr__(self) -> str:
        return f"DeviceMetrics({self._host()!r})"

    @property
    def totals(self) -> dict[str, torch.Tensor]:
        """The device totals (float64 0-d tensors) by name: counts and sums, before division."""
        return dict(zip(self._names, self._totals.unbind()))

    # -- the host side ------------------------------------------------------------------------
    def _host(self) -> dict[str, float]:
        if self._values is None:
            host = dict(zip(self._names, self._totals.tolist()))  # the one transfer
            self._values = {key: self._value(key, host) for key in self._keys}
        return self._values

    def _value(self, key: str, host: dict[str, float]) -> float:
        kind, *args = self._recipes[key]
        if kind == "count":
            return host[args[0]]
        if kind == "frac":
            num, den, empty = args
            return host[num] / host[den] if host[den] else empty
        total, count, values, where = args  # "mean"
        if not host[count]:
            return 0.0
        plain = host[total] / host[count]
        return plain if math.isfinite(plain) else self._fallback(key, plain, values, where)

    def _fallback(self, key: str, plain: float, values: str, where: str) -> float:
        """A mean whose device sum left the float range: from the per-token sources, or, for a
        merge, the count-weighted mean of the parts' (finite) values."""
        if self._parts:
            return core_merge(self._parts)[key]
        if key == "approx_kl":
            mask = self._sources["mask"]
            return approx_kl(plain, raw_log_ratio(self._source("lp"), self._source("olp"), mask,
                                                  self._source("log_r")), mask)
        return finite_mean(plain, self._source(values), self._source(where))

    def _source(self, name: str) -> torch.Tensor:
        """A per-token tensor behind a mean: kept by the loss, or made again from its inputs
        (``raw``: the loss's logp, old_logp and entropy as given), so that a compiled loss need
        not write its intermediates out for a fallback that almost never runs."""
        src = self._sources
        if name in src:
            return src[name]
        mask = src["mask"]
        if name == "neg_log_r":
            return -self._source("log_r")
        if name in ("high", "low"):
            high = mask if src["token_groups"] else mask & (src["groups"] == HIGH_GROUP)
            return high if name == "high" else mask & ~high
        logp, old_logp, entropy = src["raw"]
        dtype = src["ratio"].dtype
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        given = lambda t: torch.as_tensor(t, device=mask.device).detach().to(dtype)  # noqa: E731
        if name in ("lp", "olp"):
            return torch.where(mask, given(logp if name == "lp" else old_logp), zero)
        if name == "log_r":
            return self._source("lp") - self._source("olp")
        if name == "entropy":
            return torch.where(mask, given(entropy), zero).clamp(min=0.0)
        raise KeyError(name)


def merge_metrics(parts: Sequence) -> MutableMapping:
    """[ESPO-METRICS] [BASE-METRICS] The metrics of one optimizer step from those of its
    micro-batches, as ``espo_ref.metrics.merge_metrics`` defines them: counts summed, every
    fraction and mean token-weighted, an empty bucket left out of its average.

    When every part is a loss's own ``DeviceMetrics``, the totals add on the device (no sync)
    and the result is a ``DeviceMetrics``; otherwise (plain dicts, values set by hand) the
    parts are read and merged on the host.
    """
    parts = tuple(parts)
    if not parts:
        raise ESPOInputError("merge_metrics needs the metrics of at least one micro-batch, got none")
    first = parts[0]
    if not all(isinstance(p, DeviceMetrics) and not p._overridden and p._names == getattr(first, "_names", None)
               and p._keys == first._keys for p in parts):
        values = core_merge(parts)
        return DeviceMetrics({}, tuple(values), (), torch.zeros(0, dtype=torch.float64), values=values)
    totals = torch.stack([p._totals.to(first._totals.device) for p in parts]).sum(dim=0)
    return DeviceMetrics(first._recipes, first._keys, first._names, totals, parts=parts)


def _common_totals(mask, ratio, trained, log_r, clipped_high, clipped_low, clamped) -> dict[str, torch.Tensor]:
    """[ESPO-METRICS] [BASE-METRICS] The device counts and sums behind the keys every loss reports.
    ``ratio`` and ``log_r`` are 0 on padding (so k3 is 0 there), ``clamped`` is False there."""
    count = torch.count_nonzero  # exact, and faster than a bool .sum() (which copies to int64)
    ratio_sum = ratio.sum() if trained is mask else (ratio * factor(trained, ratio.dtype)).sum()
    return {
        "tokens": count(mask), "responses": count(mask.any(dim=1)), "clip": count(clipped_high | clipped_low),
        "clip_high": count(clipped_high), "clip_low": count(clipped_low), "clamped": count(clamped),
        "trained": count(trained), "ratio": ratio_sum, "kl": k3(log_r).sum(),
    }


def espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                 clipped_low, clamped, config: ESPOConfig) -> DeviceMetrics:
    """[ESPO-METRICS] Diagnostics of Figs. 3-5: clip fractions over all response tokens,
    split into the high-entropy bucket (group 0) and the rest, and per-group epsilons.

    A ``DeviceMetrics`` (floats, fetched in one sync when first read); finite (see the module
    docstring). ``approx_kl``'s log-space fallback uses ``log_r`` in float64.
    """
    k = Segments(groups, trained).groups_per_row()
    zero = lambda t: torch.where(mask, t.detach(), _zero(t))  # noqa: E731 (the kernel wants 0 on padding)
    log_r = zero(log_r)
    return _espo_metrics(zero(entropy), mask, groups, trained & mask, zero(ratio), zero(eps_high), log_r,
                         clipped_high & mask, clipped_low & mask, clamped & mask, config, k, lp=log_r,
                         olp=torch.zeros_like(log_r))


def _espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                  clipped_low, clamped, config: ESPOConfig, k, *, lp=None, olp=None, raw=None,
                  totals=None) -> DeviceMetrics:
    """The metrics from the loss's tensors; ``entropy``, ``ratio``, ``eps_high`` and ``log_r``
    are 0 on padding. ``lp``/``olp`` give the float64 raw log-ratio of the KL fallback, or
    ``raw`` = (logp, old_logp, entropy) as the loss was given them, from which the fallbacks
    make their inputs again. ``totals``: the counts and sums already taken on the group table
    (all but the KL's)."""
    dtype = ratio.dtype
    log_r = log_r.detach()
    token_groups = config.grouping == "token"
    sources = {"mask": mask, "groups": groups, "trained": trained, "ratio": ratio, "eps": eps_high,
               "token_groups": token_groups}
    if raw is not None:
        sources["raw"] = raw
    else:
        sources.update({"entropy": entropy, "log_r": log_r, "lp": lp.detach(), "olp": olp})
    if totals is not None:
        return DeviceMetrics.of_totals(_ESPO, ESPO_METRIC_KEYS, {**totals, "kl": k3(log_r).sum()}, sources)
    high = mask if token_groups else mask & (groups == HIGH_GROUP)
    low = mask & ~high
    high_f, low_f = factor(high, dtype), factor(low, dtype)  # exact, and far cheaper than where()
    clipped = clipped_high | clipped_low
    rows = mask.any(dim=1)
    count = torch.count_nonzero
    totals = _common_totals(mask, ratio, trained, log_r, clipped_high, clipped_low, clamped)
    totals.update({
        "clip_in_high": count(clipped & high), "high": count(high), "clip_in_low": count(clipped & low),
        "low": count(low), "k_sum": (k * rows).sum(),
        "eps_high": (eps_high * high_f).sum(), "eps_low": (eps_high * low_f).sum(),
        "entropy": entropy.sum(), "entropy_high": (entropy * high_f).sum(), "entropy_low": (entropy * low_f).sum(),
    })
    return DeviceMetrics.of_totals(_ESPO, ESPO_METRIC_KEYS, totals, sources)


def baseline_metrics(mask, ratio, log_r, clipped_high, clipped_low, clamped, *,
                     extra_counts: dict[str, torch.Tensor] | None = None, lp=None, olp=None,
                     raw=None) -> DeviceMetrics:
    """[BASE-METRICS] Clip fractions over all response tokens (TRL's binding definitions),
    the mean ratio, and the KL estimates of the raw log-ratio (k3 ``approx_kl``, k1 ``ppo_kl``).

    ``extra_counts`` (keyword-only): more token counts, reported as fractions of N_tok after
    the common keys (``clipfrac_dual``, ``capped_frac``). A ``DeviceMetrics`` (floats, fetched
    in one sync when first read), computed in the dtype of ``ratio``; finite (see the module
    docstring). ``lp``/``olp`` (keyword-only) give the float64 raw log-ratio of ``approx_kl``'s
    fallback (default ``log_r`` itself), or ``raw`` = (logp, old_logp) as the loss was given them;
    ``ratio`` and ``log_r`` are 0 on padding.
    """
    extra_counts = extra_counts or {}
    ratio = ratio.detach()
    log_r = log_r.detach()
    if raw is not None:  # the fallbacks make lp, olp and the log-ratio again from the loss's inputs
        sources = {"mask": mask, "ratio": ratio, "trained": mask, "raw": (*raw, None)}
    else:
        sources = {"mask": mask, "ratio": ratio, "trained": mask, "log_r": log_r,
                   "lp": log_r if lp is None else lp.detach(), "olp": torch.zeros_like(log_r) if olp is None else olp}
    totals = _common_totals(mask, ratio, mask, log_r, clipped_high, clipped_low, clamped)
    totals["neg_log_r"] = -log_r.sum()
    recipes = dict(_BASELINE)
    for name, where in extra_counts.items():
        totals[f"extra:{name}"] = torch.count_nonzero(where)
        recipes[name] = ("frac", f"extra:{name}", "tokens", _NAN)
    return DeviceMetrics.of_totals(recipes, (*BASELINE_KEYS, *extra_counts), totals, sources)
