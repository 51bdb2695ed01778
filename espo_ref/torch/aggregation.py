"""Aggregation: ESPO's weights over groups, responses and the batch [ESPO-AGG], and the
baselines' four modes over a padded batch [BASE-AGG], with empty rows pinned [BASE-AGG-EMPTY];
torch mirror of espo_ref/aggregation.py.

Every mode is linear in the per-token loss, so it is written as a weight per token:
``agg_loss(l, mask, mode) = sum_{b,t} w[b,t] * l[b,t]`` with ``w = agg_weights(mask, mode)``.
The mode names and their check are the core's (``LOSS_AGG_MODES``, ``check_agg_mode``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import LOSS_AGG_MODES, check_agg_mode
from ..errors import ESPOInputError
from ._checks import as_mask, as_real_array, check_shape, coerce, compute_dtype, dtype_name, finite_on
from ._segments import Segments

__all__ = ["LOSS_AGG_MODES", "check_agg_mode", "aggregation_weights", "agg_weights", "agg_loss"]


def aggregation_weights(groups, trained, mask, *, dtype: torch.dtype = torch.float64,
                        validate: bool = True) -> torch.Tensor:
    """[ESPO-AGG] Eq. 5 weights: w_t = 1 / (N K_i |tau|) for trained tokens, else 0.

    N = the responses with at least one response token, K_i = the trained non-empty
    groups of response i, |tau| = the trained tokens of the token's group. ``dtype``
    (keyword-only) defaults to the core's float64; the group count is read from the data
    and the empty-batch check syncs.
    """
    m, _ = coerce(mask, name="mask")
    m = as_mask(mask, "mask", tuple(m.shape) if m is not None else np.shape(mask), validate=validate)
    t = as_mask(trained, "trained", tuple(m.shape), device=m.device, validate=validate)
    g, _ = coerce(groups, m.device, "groups")
    check_shape(g, "groups", tuple(m.shape), "mask")
    return _aggregation_weights(Segments(g.to(torch.int64), t), m, dtype=dtype, validate=validate)[0]


def _aggregation_weights(trained_seg: Segments, mask: torch.Tensor, *, dtype: torch.dtype,
                         validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights from the trained segments, and K_i."""
    per_group, k = _aggregation_table(trained_seg, mask.any(dim=1), dtype=dtype, validate=validate)
    return trained_seg.to_tokens(per_group), k


def _aggregation_table(trained_seg: Segments, rows: torch.Tensor, *, dtype: torch.dtype,
                       validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight 1 / (N K_i |tau|) of each trained group [B, W] (``rows``: the responses with a
    response token), and K_i."""
    responses = torch.count_nonzero(rows)
    if validate and not bool(responses > 0):
        raise ESPOInputError("mask has no response token: the objective is undefined")
    k = trained_seg.groups_per_row()
    return 1.0 / (responses * k.clamp(min=1)[:, None] * trained_seg.counts.clamp(min=1)).to(dtype), k


def _as_float(norm: int) -> float:
    try:
        return float(norm)
    except OverflowError:
        raise ESPOInputError(f"max_len must be below 2**1024 to be a float64, got an int of "
                             f"{norm.bit_length()} bits") from None


def _agg_weights(m: torch.Tensor, mode: str, max_len: int | None, dtype: torch.dtype,
                 validate: bool = True) -> torch.Tensor:
    """The weights of a checked boolean mask ``m`` (mode already checked). The two error
    checks (empty batch, max_len too short) read the data: host syncs, only if validate."""
    lengths = m.sum(dim=1)
    tokens = lengths.sum()
    if validate and int(tokens) == 0:
        raise ESPOInputError("mask has no response token: the aggregated loss is undefined")
    responses = (lengths > 0).sum()
    if mode == "token-mean":
        per_row = (1.0 / tokens.to(dtype)).expand(lengths.shape)
    elif mode == "seq-mean-token-mean":
        per_row = 1.0 / (responses * lengths.clamp(min=1)).to(dtype)
    elif mode == "seq-mean-token-sum":
        per_row = (1.0 / responses.to(dtype)).expand(lengths.shape)
    else:
        norm = m.shape[1] if max_len is None else int(max_len)
        if validate:
            longest = int(lengths.max())
            if longest > norm:
                raise ESPOInputError(
                    f"max_len must be >= the longest response ({longest} tokens), got {norm}"
                )
        # N * M in floating point, as the core's int-to-float: an int64 product overflows for a large M
        per_row = (1.0 / (responses.to(dtype) * _as_float(norm))).expand(lengths.shape)
    return torch.where(m, per_row[:, None], torch.zeros((), dtype=dtype, device=m.device))


def agg_weights(mask, mode: str, max_len: int | None = None, *, dtype: torch.dtype = torch.float64,
                validate: bool = True) -> torch.Tensor:
    """[BASE-AGG] [BASE-AGG-EMPTY] The weight of each token in the aggregated loss, [B, T].

    With N_tok the response tokens, N the responses with at least one response token,
    L_i the tokens of response i and M = ``max_len`` (default T):
    token-mean 1/N_tok; seq-mean-token-mean 1/(N L_i); seq-mean-token-sum 1/N;
    seq-mean-token-sum-norm 1/(N M). 0 on padding. Empty rows count in no mode; a mask
    with no response token at all is an error. ``dtype`` (keyword-only) defaults to the
    core's float64; the result is on the mask's device. ``validate=False`` skips the
    value checks (no host sync).
    """
    check_agg_mode(mode, max_len)
    t, _ = coerce(mask, name="mask")
    shape = tuple(t.shape) if t is not None else np.asarray(mask).shape
    if len(shape) != 2:
        raise ESPOInputError(f"mask must be 2-D [B, T], got shape {shape}")
    m = as_mask(mask, "mask", shape, validate=validate)
    return _agg_weights(m, mode, max_len, dtype, validate)


def agg_loss(per_token, mask, mode: str, max_len: int | None = None, *,
             validate: bool = True) -> torch.Tensor:
    """[BASE-AGG] Aggregate a per-token loss [B, T] to a scalar: sum(agg_weights * per_token).

    Returns a 0-d tensor (the core returns a float), differentiable w.r.t. ``per_token``
    (d / d per_token = the weights, 0 on padding); float64 for float64 input, else float32.
    Padding positions of ``per_token`` may hold anything (NaN included; replaced by 0 with
    ``torch.where`` before any arithmetic); response positions must be finite. A sum beyond
    the range of the dtype is an error naming ``per_token`` (a sync, if ``validate``).
    """
    values = as_real_array(per_token, "per_token", ndim=2)
    m = as_mask(mask, "mask", tuple(values.shape), device=values.device, validate=validate)
    dtype = compute_dtype(values)
    check_agg_mode(mode, max_len)
    weights = _agg_weights(m, mode, max_len, dtype, validate)
    values = finite_on(values, m, "per_token", dtype, validate)
    total = torch.sum(weights * values)
    if validate and not bool(torch.isfinite(total.detach())):
        raise ESPOInputError(
            f"per_token: the aggregated loss overflows {dtype_name(dtype)} (values up to "
            f"{float(values.detach()[m].abs().max()):.6g} in magnitude)"
        )
    return total
