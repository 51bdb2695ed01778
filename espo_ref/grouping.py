"""Entropy grouping, Eq. 7 [ESPO-GROUP] and its pinned variants."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ._checks import check_shape
from .config import ESPOConfig, check_config, decimal_fraction
from .entropy import validate_entropy
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
    return _high_group_size(lengths, decimal_fraction(top_fraction))


def _high_group_size(lengths: np.ndarray, rho: Fraction) -> np.ndarray:
    exact = -((-lengths.astype(object) * rho.numerator) // rho.denominator)
    n_high = np.asarray(exact, dtype=np.int64).reshape(lengths.shape)
    return np.minimum(np.maximum(n_high, 1), lengths)


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


def _top_fraction(entropy: np.ndarray, mask: np.ndarray, rho: Fraction) -> np.ndarray:
    n_high = _high_group_size(mask.sum(axis=1), rho)
    key = np.where(mask, entropy, -np.inf)
    rank = _rank_descending(key, axis=1)
    return np.where(rank < n_high[:, None], HIGH_GROUP, LOW_GROUP)


def _batch_top_fraction(entropy: np.ndarray, mask: np.ndarray, rho: Fraction) -> np.ndarray:
    n_high = _high_group_size(np.array([mask.sum()]), rho)[0]
    key = np.where(mask, entropy, -np.inf).reshape(-1)
    rank = _rank_descending(key, axis=0).reshape(mask.shape)
    return np.where(rank < n_high, HIGH_GROUP, LOW_GROUP)


def _entropy_ranges(entropy: np.ndarray, config: ESPOConfig) -> np.ndarray:
    edges = np.asarray(config.entropy_edges, dtype=np.float64)
    normalised = entropy / config.log_vocab
    # Range k counts the edges above the token: k = 0 is the highest-entropy range;
    # a token exactly on an edge belongs to the range above it.
    return edges.size - np.searchsorted(edges, normalised, side="right")


def entropy_groups(entropy, mask, config: ESPOConfig) -> np.ndarray:
    """[ESPO-GROUP] Eq. 7: the group index of each response token, int64 [B, T], -1 on padding.

    top_fraction [ESPO-GROUP-TOPFRAC]: 0 = the ceil(rho L) highest-entropy tokens of the
    response, 1 = the rest. Variants: batch_top_fraction [ESPO-GROUP-BATCH],
    entropy_ranges [ESPO-GROUP-RANGES], none [ESPO-GROUP-NONE], token [ESPO-GROUP-TOKEN].
    """
    check_config(config, ESPOConfig)
    ent, m = validate_entropy(entropy, mask, config)
    return _entropy_groups(ent, m, config)


def _entropy_groups(ent: np.ndarray, m: np.ndarray, config: ESPOConfig) -> np.ndarray:
    B, T = m.shape
    if config.grouping == "top_fraction":
        groups = _top_fraction(ent, m, decimal_fraction(config.top_fraction))
    elif config.grouping == "batch_top_fraction":
        groups = _batch_top_fraction(ent, m, decimal_fraction(config.top_fraction))
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


def check_groups(groups, mask_shape: tuple[int, ...] | None, name: str = "groups") -> np.ndarray:
    """[ESPO-GROUP] Validate a [B, T] integer group array (-1 = padding) of ``mask_shape``
    (None: any shape)."""
    g = np.asarray(groups)
    if g.dtype.kind not in "iu":
        raise ESPOInputError(f"{name} must be an integer array, got dtype {g.dtype}")
    if mask_shape is not None:
        check_shape(g, name, mask_shape, "the token arrays")
    if (g < PADDING).any():
        raise ESPOInputError(f"{name} must be >= -1 (-1 marks padding), got min {g.min()}")
    return g.astype(np.int64)
