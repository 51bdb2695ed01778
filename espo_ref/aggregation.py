"""Aggregation: ESPO's weights over groups, responses and the batch [ESPO-AGG], and the
baselines' four modes over a padded batch [BASE-AGG], with empty rows pinned [BASE-AGG-EMPTY].

Every mode is linear in the per-token loss, so it is written as a weight per token:
``agg_loss(l, mask, mode) = sum_{b,t} w[b,t] * l[b,t]`` with ``w = agg_weights(mask, mode)``.
The weights are what the gradients of the baselines use.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_mask, as_real_array, check_shape, finite_on
from ._segments import Segments
from .config import LOSS_AGG_MODES, check_agg_mode
from .errors import ESPOInputError

__all__ = ["LOSS_AGG_MODES", "check_agg_mode", "aggregation_weights", "agg_weights", "agg_loss"]


def aggregation_weights(groups, trained, mask) -> np.ndarray:
    """[ESPO-AGG] Eq. 5 weights: w_t = 1 / (N K_i |tau|) for trained tokens, else 0.

    N = the responses with at least one response token, K_i = the trained non-empty
    groups of response i, |tau| = the trained tokens of the token's group.
    """
    m = as_mask(mask, "mask", np.shape(mask))
    t = as_mask(trained, "trained", m.shape)
    g = np.asarray(groups)
    check_shape(g, "groups", m.shape, "mask")
    return _aggregation_weights(Segments(g, t), m)[0]


def _aggregation_weights(trained_seg: Segments, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weights from the trained segments, and K_i."""
    responses = int(mask.any(axis=1).sum())
    if responses == 0:
        raise ESPOInputError("mask has no response token: the objective is undefined")
    trained = trained_seg.include
    k = trained_seg.groups_per_row()
    size = trained_seg.to_tokens(trained_seg.counts.astype(np.float64))
    denom = responses * np.maximum(k, 1)[:, None] * np.where(trained, size, 1.0)
    return np.where(trained, 1.0 / denom, 0.0), k



def agg_weights(mask, mode: str, max_len: int | None = None) -> np.ndarray:
    """[BASE-AGG] [BASE-AGG-EMPTY] The weight of each token in the aggregated loss, float [B, T].

    With N_tok the response tokens, N the responses with at least one response token,
    L_i the tokens of response i and M = ``max_len`` (default T):
    token-mean 1/N_tok; seq-mean-token-mean 1/(N L_i); seq-mean-token-sum 1/N;
    seq-mean-token-sum-norm 1/(N M). 0 on padding. Empty rows count in no mode; a mask
    with no response token at all is an error.
    """
    check_agg_mode(mode, max_len)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ESPOInputError(f"mask must be 2-D [B, T], got shape {m.shape}")
    return _agg_weights(as_mask(m, "mask", m.shape), mode, max_len)


def _agg_weights(m: np.ndarray, mode: str, max_len: int | None) -> np.ndarray:
    """The weights of a checked boolean mask ``m`` (mode already checked)."""
    lengths = m.sum(axis=1)
    tokens = int(lengths.sum())
    if tokens == 0:
        raise ESPOInputError("mask has no response token: the aggregated loss is undefined")
    responses = int((lengths > 0).sum())
    if mode == "token-mean":
        per_row = np.full(lengths.shape, 1.0 / tokens)
    elif mode == "seq-mean-token-mean":
        per_row = 1.0 / (responses * np.maximum(lengths, 1).astype(np.float64))
    elif mode == "seq-mean-token-sum":
        per_row = np.full(lengths.shape, 1.0 / responses)
    else:
        norm = m.shape[1] if max_len is None else int(max_len)
        if int(lengths.max()) > norm:
            raise ESPOInputError(
                f"max_len must be >= the longest response ({int(lengths.max())} tokens), got {norm}"
            )
        try:
            per_row = np.full(lengths.shape, 1.0 / (responses * norm))  # exact int product, one rounding
        except OverflowError:
            raise ESPOInputError(f"max_len must be below 2**1024 to be a float64, got an int of "
                                 f"{norm.bit_length()} bits") from None
    return np.where(m, per_row[:, None], 0.0)


def agg_loss(per_token, mask, mode: str, max_len: int | None = None) -> float:
    """[BASE-AGG] Aggregate a per-token loss [B, T] to a scalar: sum(agg_weights * per_token).

    Padding positions of ``per_token`` may hold anything (NaN included); response positions
    must be finite. A sum beyond the float64 range is an error naming ``per_token``.
    """
    values = as_real_array(per_token, "per_token", ndim=2)
    m = as_mask(mask, "mask", values.shape)
    check_agg_mode(mode, max_len)
    weights = _agg_weights(m, mode, max_len)
    values = finite_on(values, m, "per_token")
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(weights * values))
    if not np.isfinite(total):
        raise ESPOInputError(
            f"per_token: the aggregated loss overflows float64 (values up to "
            f"{float(np.abs(values[m]).max()):.6g} in magnitude)"
        )
    return total
