"""Loss aggregation over a padded batch [BASE-AGG], with empty rows pinned [BASE-AGG-EMPTY].

Every mode is linear in the per-token loss, so it is written as a weight per token:
``agg_loss(l, mask, mode) = sum_{b,t} w[b,t] * l[b,t]`` with ``w = agg_weights(mask, mode)``.
The weights are what the gradients of the baselines use.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_mask, as_real_array, finite_on
from .config import is_integer_number
from .errors import ESPOInputError

LOSS_AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def check_agg_mode(mode, max_len=None, name: str = "loss_agg_mode") -> None:
    """[BASE-AGG] A known mode; ``max_len`` (int >= 1) only with seq-mean-token-sum-norm."""
    if mode not in LOSS_AGG_MODES:
        raise ESPOInputError(f"{name} must be one of {LOSS_AGG_MODES}, got {mode!r}")
    if max_len is None:
        return
    if mode != "seq-mean-token-sum-norm":
        raise ESPOInputError(
            f"max_len is only used by loss_agg_mode='seq-mean-token-sum-norm', got mode {mode!r}"
        )
    if not is_integer_number(max_len) or max_len < 1:
        raise ESPOInputError(f"max_len must be an int >= 1 or None, got {max_len!r}")


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
    m = as_mask(m, "mask", m.shape)
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
        per_row = np.full(lengths.shape, 1.0 / (responses * norm))
    return np.where(m, per_row[:, None], 0.0)


def agg_loss(per_token, mask, mode: str, max_len: int | None = None) -> float:
    """[BASE-AGG] Aggregate a per-token loss [B, T] to a scalar: sum(agg_weights * per_token).

    Padding positions of ``per_token`` may hold anything (NaN included); response positions
    must be finite. A sum beyond the float64 range is an error naming ``per_token``.
    """
    values = as_real_array(per_token, "per_token", ndim=2)
    m = as_mask(mask, "mask", values.shape)
    weights = agg_weights(m, mode, max_len)
    values = finite_on(values, m, "per_token")
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(weights * values))
    if not np.isfinite(total):
        raise ESPOInputError(
            f"per_token: the aggregated loss overflows float64 (values up to "
            f"{float(np.abs(values[m]).max()):.6g} in magnitude)"
        )
    return total
