"""Entropy grouping, Eq. 7 [ESPO-GROUP] and its pinned variants."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ._checks import as_mask, as_real_array, check_shape, entropy_in_range, finite_on
from .config import ESPOConfig, _check_real, check_config
from .errors import ESPOInputError

HIGH_GROUP = 0
LOW_GROUP = 1
PADDING = -1


def high_group_size(lengths, top_fraction: float) -> np.ndarray:
    """[ESPO-GROUP-TOPFRAC] n_high = clamp(ceil(rho * L), 1, L), exact on rho's decimal value.

    ``rho`` is read as the decimal it prints as (``repr``), so 0.2 * 5 gives 1, not 2;
    the product is taken in integer arithmetic. L = 0 gives 0.
    """
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu" or (lengths < 0).any():
        raise ESPOInputError(f"lengths must be non-negative integers, got {lengths!r}")
    rho = decimal_fraction(top_fraction)
    exact = -((-lengths.astype(object) * rho.numerator) // rho.denominator)
    n_high = np.asarray(exact, dtype=np.int64).reshape(lengths.shape)
    return np.minimum(np.maximum(n_high, 1), lengths)


def decimal_fraction(top_fraction) -> Fraction:
    """[ESPO-GROUP-TOPFRAC] rho as the exact decimal it prints as; a value that is not a finite
    real number in (0, 1] is an error naming ``top_fraction``."""
    rho = _check_real("top_fraction", top_fraction)
    if not 0.0 < rho <= 1.0:
        raise ESPOInputError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return Fraction(repr(rho))


def _rank_descending(key: np.ndarray, axis: int) -> np.ndarray:
    """Rank of each entry by key descending, ties by earlier index (stable sort)."""
    order = np.argsort(-key, axis=axis, kind="stable")
    rank = np.empty_like(order)
    positions = np.broadcast_to(
        np.arange(key.shape[axis], dtype=order.dtype).reshape([-1 if a == axis else 1 for a in range(key.ndim)]),
        order.shape,
    )
    np.put_along_axis(rank, order, positions, axis=axis)
    return rank


def _top_fraction(entropy: np.ndarray, mask: np.ndarray, rho: float) -> np.ndarray:
    n_high = high_group_size(mask.sum(axis=1), rho)
    key = np.where(mask, entropy, -np.inf)
    rank = _rank_descending(key, axis=1)
    return np.where(rank < n_high[:, None], HIGH_GROUP, LOW_GROUP)


def _batch_top_fraction(entropy: np.ndarray, mask: np.ndarray, rho: float) -> np.ndarray:
    n_high = high_group_size(np.array([mask.sum()]), rho)[0]
    key = np.where(mask, entropy, -np.inf).reshape(-1)
    rank = _rank_descending(key, axis=0).reshape(mask.shape)
    return np.where(rank < n_high, HIGH_GROUP, LOW_GROUP)


def _entropy_ranges(entropy: np.ndarray, config: ESPOConfig) -> np.ndarray:
    edges = np.asarray(config.entropy_edges, dtype=np.float64)
    normalised = entropy / config.log_vocab
    # Range k counts the edges above the token: k = 0 is the highest-entropy range;
    # a token exactly on an edge belongs to the range above it.
    return edges.size - np.searchsorted(edges, normalised, side="right")


def validate_entropy(entropy, mask, config: ESPOConfig, name: str = "entropy"):
    """Validated float64 entropy [B, T] (padding zeroed, clamped below at 0) and the
    boolean mask [ESPO-ENT-DOMAIN]."""
    ent = as_real_array(entropy, name, ndim=2)
    m = as_mask(mask, "mask", ent.shape)
    ent = finite_on(ent, m, name)
    entropy_in_range(ent, m, config.log_vocab, config.entropy_tolerance)
    # [ESPO-ENT-DOMAIN] values inside the tolerance band below 0 are clamped to 0.
    return np.maximum(ent, 0.0), m


def entropy_groups(entropy, mask, config: ESPOConfig) -> np.ndarray:
    """[ESPO-GROUP] Eq. 7: the group index of each response token, int64 [B, T], -1 on padding.

    top_fraction [ESPO-GROUP-TOPFRAC]: 0 = the ceil(rho L) highest-entropy tokens of the
    response, 1 = the rest. Variants: batch_top_fraction [ESPO-GROUP-BATCH],
    entropy_ranges [ESPO-GROUP-RANGES], none [ESPO-GROUP-NONE], token [ESPO-GROUP-TOKEN].
    """
    check_config(config, ESPOConfig)
    ent, m = validate_entropy(entropy, mask, config)
    B, T = m.shape
    if config.grouping == "top_fraction":
        groups = _top_fraction(ent, m, config.top_fraction)
    elif config.grouping == "batch_top_fraction":
        groups = _batch_top_fraction(ent, m, config.top_fraction)
    elif config.grouping == "entropy_ranges":
        groups = _entropy_ranges(ent, config)
    elif config.grouping == "none":
        groups = np.zeros((B, T), dtype=np.int64)
    else:  # "token": every token its own group, numbered by position
        groups = np.broadcast_to(np.arange(T, dtype=np.int64), (B, T))
    return np.where(m, groups, PADDING).astype(np.int64)


def trained_tokens(groups: np.ndarray, config: ESPOConfig) -> np.ndarray:
    """[ESPO-GROUP-DROPLOW] Tokens that enter the objective: all response tokens, or only
    group 0 (the highest-entropy group) when ``drop_low_group`` is set."""
    if config.drop_low_group:
        return groups == HIGH_GROUP
    return groups >= 0


def check_groups(groups, mask_shape: tuple[int, ...], name: str = "groups") -> np.ndarray:
    """Validate a [B, T] integer group array (-1 = padding)."""
    g = np.asarray(groups)
    if g.dtype.kind not in "iu":
        raise ESPOInputError(f"{name} must be an integer array, got dtype {g.dtype}")
    check_shape(g, name, mask_shape, "the token arrays")
    if (g < PADDING).any():
        raise ESPOInputError(f"{name} must be >= -1 (-1 marks padding), got min {g.min()}")
    return g.astype(np.int64)
