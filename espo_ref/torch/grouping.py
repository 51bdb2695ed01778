"""Entropy grouping, Eq. 7 [ESPO-GROUP], torch mirror of espo_ref/grouping.py."""

from __future__ import annotations

import struct
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch

from ..config import ESPOConfig, ceil_fraction, check_config, decimal_fraction
from ..errors import ESPOInputError
from ..grouping import HIGH_GROUP, LOW_GROUP, PADDING  # noqa: F401 (the ids the arithmetic below encodes)
from ._checks import check_shape, coerce, host_array, is_integer
from ._segments import factor
from .entropy import validate_entropy

_INT64_MAX = 2**63 - 1


def _ceil_product(lengths: torch.Tensor, num: int, den: int, bound: int) -> torch.Tensor:
    """ceil(L * num / den) exactly, for int64 L in [0, bound] and 0 < num <= den.

    Plain int64 arithmetic when bound * num cannot overflow; otherwise a base-16 long
    division of L * (num mod den) by den (a loop over the digits of L, not over the data);
    a host fallback (a sync) only when den >= 2**58.
    """
    if bound <= 0:
        return torch.zeros_like(lengths)
    if bound * num + den - 1 <= _INT64_MAX:
        return (lengths * num + den - 1) // den
    if num * bound < den:  # 0 < L num / den < 1 for every 1 <= L <= bound
        return (lengths > 0).to(torch.int64)
    q, r = divmod(num, den)
    if den < 2**58:
        quo = torch.zeros_like(lengths)
        rem = torch.zeros_like(lengths)
        for shift in range(4 * ((bound.bit_length() - 1) // 4), -1, -4):
            x = rem * 16 + ((lengths >> shift) & 15) * r
            quo = quo * 16 + x // den
            rem = x % den
        return lengths * q + quo + (rem > 0).to(torch.int64)
    host = host_array(lengths).astype(object)
    exact = np.asarray(-((-host * num) // den), dtype=np.int64).reshape(host.shape)
    return torch.from_numpy(exact).to(lengths.device)


def high_group_size(lengths, top_fraction: float, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-GROUP-TOPFRAC] n_high = clamp(ceil(rho * L), 1, L), exact on rho's decimal value.

    ``rho`` is read as the decimal it prints as (``repr``), so 0.2 * 5 gives 1, not 2;
    the product is taken in exact integer tensor arithmetic. L = 0 gives 0. Returns int64
    of the shape of ``lengths``, on its device. The bound max(L) is read from the data
    (a host sync), as is the non-negativity check (skipped when ``validate=False``).
    """
    t, _ = coerce(lengths, name="lengths")
    if t is None or not is_integer(t.dtype) or (validate and t.numel() and bool((t < 0).any())):
        raise ESPOInputError(f"lengths must be non-negative integers, got {np.asarray(host_array(t) if t is not None else lengths)!r}")
    rho = decimal_fraction(top_fraction)
    bound = int(t.max()) if t.numel() else 0
    return _high_group_size(t, rho, bound)


def _high_group_size(lengths: torch.Tensor, rho: Fraction, bound: int) -> torch.Tensor:
    n_high = _ceil_product(lengths.to(torch.int64), rho.numerator, rho.denominator, bound)
    return torch.minimum(n_high.clamp(min=1), lengths.to(torch.int64))


def _host_size(length: int, rho: Fraction) -> int:
    """n_high of one length, on the host (exact integer arithmetic): the k of ``topk``."""
    return min(max(ceil_fraction(length, rho), 1), length)


def _order_key(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Integers ordered as the non-negative floats ``values`` on ``mask`` (-0.0 and 0.0 alike),
    with every padding position below every response token.

    ``values + (mask - 1)`` turns -0.0 into 0.0 and padding (0 there) into -1.0; the bits of a
    non-negative float order as the float, and those of -1.0 are negative. ``topk`` on the
    integers is about twice as fast as on the floats (CPU).
    """
    key = values + (factor(mask, values.dtype) - 1.0)
    return key.view(torch.int64 if key.dtype == torch.float64 else torch.int32)


def _select_top(key: torch.Tensor, n_high: torch.Tensor, k_max: int) -> torch.Tensor:
    """Rows of ``key`` [R, N]: True on the n_high[r] largest entries, ties by earlier position.

    The n-th largest value v comes from one ``topk`` (k_max = the largest n); entries above
    v are in, and of the entries equal to v the first n - #(above v) by position are in.
    """
    top = torch.topk(key, k_max, dim=1, largest=True, sorted=True).values
    v = top.gather(1, (n_high - 1).clamp(min=0).unsqueeze(1))
    greater = key > v
    equal = key == v
    need = n_high - torch.count_nonzero(greater, dim=1)
    count_dtype = torch.int32 if key.shape[1] < 2**31 else torch.int64
    tie_rank = equal.to(count_dtype).cumsum(dim=1, dtype=count_dtype)
    return greater | (equal & (tie_rank <= need.unsqueeze(1)))


def _top_fraction(entropy: torch.Tensor, mask: torch.Tensor, rho: Fraction) -> torch.Tensor:
    """The high bucket (bool [B, T]) of ``entropy`` (>= 0 on response tokens, 0 on padding)."""
    B, T = mask.shape
    n_high = _high_group_size(torch.count_nonzero(mask, dim=1), rho, T)
    return _select_top(_order_key(entropy, mask), n_high, _host_size(T, rho))


def _batch_top_fraction(entropy: torch.Tensor, mask: torch.Tensor, rho: Fraction) -> torch.Tensor:
    n = mask.numel()
    n_high = _high_group_size(torch.count_nonzero(mask).reshape(1), rho, n)
    key = _order_key(entropy, mask)
    return _select_top(key.reshape(1, n), n_high, _host_size(n, rho)).reshape(mask.shape)


@torch.compiler.assume_constant_result  # a function of the config alone: a constant of a compiled graph
def _edge_thresholds(edges: tuple[float, ...], log_vocab: float, double: bool) -> tuple[float, ...]:
    """The thresholds of ``_thresholds``: cached in eager, folded to constants when compiled."""
    if torch.compiler.is_compiling():
        return _thresholds(edges, log_vocab, double)
    return _cached_thresholds(edges, log_vocab, double)


def _thresholds(edges: tuple[float, ...], log_vocab: float, double: bool) -> tuple[float, ...]:
    """For each edge c, the smallest non-negative x of the dtype with float64(x) / log|V| >= c.

    x >= threshold then decides membership exactly as the core's float64 division and
    searchsorted do, without dividing (and without float64 for float32 entropies).
    """
    # plain Python (struct, float division: IEEE float64 as numpy's), so that a compiled graph
    # folds it to constants instead of tracing numpy
    int_fmt, float_fmt, top = ("<Q", "<d", 0x7FF0000000000000) if double else ("<I", "<f", 0x7F800000)

    def value(bits: int) -> float:
        return struct.unpack(float_fmt, struct.pack(int_fmt, bits))[0]

    out = []
    for c in edges:
        lo, hi = 0, top  # value(top) = +inf satisfies the test
        while lo < hi:
            mid = (lo + hi) // 2
            if value(mid) / log_vocab >= c:
                hi = mid
            else:
                lo = mid + 1
        out.append(float(value(lo)))
    return tuple(out)


_cached_thresholds = lru_cache(maxsize=64)(_thresholds)


def _entropy_ranges(entropy: torch.Tensor, config: ESPOConfig) -> torch.Tensor:
    thresholds = torch.tensor(
        _edge_thresholds(config.entropy_edges, config.log_vocab, entropy.dtype == torch.float64),
        dtype=entropy.dtype, device=entropy.device)
    # Range k counts the edges above the token: k = 0 is the highest-entropy range;
    # a token exactly on an edge belongs to the range above it.
    above = torch.searchsorted(thresholds, entropy.contiguous(), right=True)
    return len(config.entropy_edges) - above


def group_width(config: ESPOConfig, T: int) -> int:
    """W, the number of group ids a grouping can produce (known without reading the data)."""
    return {"top_fraction": 2, "batch_top_fraction": 2, "none": 1, "token": max(T, 1),
            "entropy_ranges": len(config.entropy_edges) + 1}[config.grouping]


def entropy_groups(entropy, mask, config: ESPOConfig, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-GROUP] Eq. 7: the group index of each response token, int64 [B, T], -1 on padding.

    top_fraction [ESPO-GROUP-TOPFRAC]: 0 = the ceil(rho L) highest-entropy tokens of the
    response, 1 = the rest. Variants: batch_top_fraction [ESPO-GROUP-BATCH],
    entropy_ranges [ESPO-GROUP-RANGES], none [ESPO-GROUP-NONE], token [ESPO-GROUP-TOKEN].
    """
    check_config(config, ESPOConfig)
    ent, m = validate_entropy(entropy, mask, config, validate=validate)
    return _entropy_groups(ent, m, config)


def _entropy_groups(ent: torch.Tensor, m: torch.Tensor, config: ESPOConfig) -> torch.Tensor:
    return _groups_and_members(ent, m, config)[0]


def _groups_and_members(ent: torch.Tensor, m: torch.Tensor, config: ESPOConfig):
    """(groups int64 [B, T] with -1 on padding, the groups' boolean members or None).
    ``ent`` is the validated entropy (>= 0 on response tokens)."""
    B, T = m.shape
    if m.numel() == 0:
        return torch.full((B, T), PADDING, dtype=torch.int64, device=m.device), None
    if config.grouping in ("top_fraction", "batch_top_fraction"):
        select = _top_fraction if config.grouping == "top_fraction" else _batch_top_fraction
        high = select(ent, m, decimal_fraction(config.top_fraction))
        low = m & ~high
        # HIGH_GROUP 0, LOW_GROUP 1, PADDING -1: m + low - 1, in bytes (then one widening)
        if torch.compiler.is_compiling():
            groups = m.to(torch.int64) + low.to(torch.int64) - 1
        else:
            groups = (m.view(torch.int8) + low.view(torch.int8) - 1).to(torch.int64)
        return groups, [high, low]
    if config.grouping == "entropy_ranges":
        groups = _entropy_ranges(ent, config)
    elif config.grouping == "none":
        return m.view(torch.int8).to(torch.int64) - 1, [m]
    else:  # "token": every token its own group, numbered by position
        groups = torch.arange(T, dtype=torch.int64, device=m.device).expand(B, T)
    return torch.where(m, groups, PADDING).to(torch.int64), None


def trained_tokens(groups: torch.Tensor, config: ESPOConfig) -> torch.Tensor:
    """[ESPO-GROUP-DROPLOW] Tokens that enter the objective: all response tokens, or only
    group 0 (the highest-entropy group) when ``drop_low_group`` is set."""
    if config.drop_low_group:
        return groups == HIGH_GROUP
    return groups >= 0


def check_groups(groups, mask_shape: tuple[int, ...] | None, name: str = "groups", *, device=None,
                 validate: bool = True) -> torch.Tensor:
    """[ESPO-GROUP] Validate a [B, T] integer group tensor (-1 = padding) of ``mask_shape``
    (None: any shape)."""
    g, numpy_name = coerce(groups, device, name)
    if g is None or not is_integer(g.dtype):
        raise ESPOInputError(f"{name} must be an integer array, got dtype {numpy_name}")
    if mask_shape is not None:
        check_shape(g, name, mask_shape, "the token arrays")
    if validate and g.numel() and bool((g < PADDING).any()):
        raise ESPOInputError(f"{name} must be >= -1 (-1 marks padding), got min {int(g.min())}")
    return g.to(torch.int64)
