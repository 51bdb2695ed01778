"""Input validation shared by the numpy core [ESPO-INPUT].

Every check raises ESPOInputError naming the argument and what is wrong. Padding
positions (mask False) may hold anything, NaN included; the checks return copies in
which padding is zeroed so that nothing from it can leak into an output.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ESPOInputError


def first_index(bad: np.ndarray) -> tuple[int, ...]:
    """Row-major first True position."""
    return tuple(int(i) for i in np.argwhere(bad)[0])


def raise_at_first(bad: np.ndarray, message: Callable[[tuple[int, ...]], str]) -> None:
    """[ESPO-INPUT] Raise ``ESPOInputError(message(index))`` at the first True of ``bad``
    (row-major); nothing when all are False."""
    if bad.any():
        raise ESPOInputError(message(first_index(bad)))


def readable(x, name: str) -> np.ndarray:
    """[ESPO-INPUT] ``np.asarray(x)``; an object numpy cannot read (a tensor on the meta device or
    on a GPU, ...) is an error naming the argument."""
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - whatever refuses conversion is the caller's input error
        raise ESPOInputError(f"{name} cannot be read as an array ({type(x).__name__}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def as_real_array(x, name: str, ndim: int | None = None) -> np.ndarray:
    """float64 copy of a real (non-bool, non-complex) numeric array."""
    arr = readable(x, name)
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise ESPOInputError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ESPOInputError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr.astype(np.float64)


def as_mask(mask, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the given shape; accepts bool or numeric 0/1 arrays."""
    arr = readable(mask, name)
    if arr.shape != tuple(shape):
        raise ESPOInputError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.copy()
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise ESPOInputError(f"{name} must be boolean or 0/1, got dtype {arr.dtype}")
    raise_at_first((arr != 0) & (arr != 1),
                   lambda idx: f"{name} must be boolean or 0/1, found {arr[idx]!r} at index {list(idx)}")
    return arr.astype(bool)


def check_shape(arr: np.ndarray, name: str, shape: tuple[int, ...], ref: str) -> None:
    if arr.shape != tuple(shape):
        raise ESPOInputError(f"{name} must have the shape of {ref} {tuple(shape)}, got {arr.shape}")


def finite_on(arr: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """Raise if arr is non-finite at a response position; return arr with padding zeroed."""
    raise_at_first(mask & ~np.isfinite(arr),
                   lambda idx: f"{name} has a non-finite value {arr[idx]!r} at response position {list(idx)}")
    return np.where(mask, arr, 0.0)


def entropy_in_range(entropy: np.ndarray, mask: np.ndarray, log_vocab: float, tol: float) -> None:
    """Eq. 6 bounds: 0 <= e <= log|V|, up to an absolute tolerance [ESPO-ENT-DOMAIN]."""
    raise_at_first(mask & ((entropy < -tol) | (entropy > log_vocab + tol)),
                   lambda idx: f"entropy must lie in [0, log(vocab_size)] = [0, {log_vocab:.6g}] "
                               f"(tolerance {tol:g}); found {entropy[idx]!r} at response position {list(idx)}")


def advantages_2d(advantages, mask: np.ndarray, name: str = "advantages") -> np.ndarray:
    """[ESPO-INPUT] [BASE-INPUT] Advantages given per response [B] or per token [B, T], as [B, T]
    with padding 0."""
    adv = as_real_array(advantages, name)
    B, T = mask.shape
    if adv.ndim == 1:
        if adv.shape != (B,):
            raise ESPOInputError(f"{name} must have shape ({B},) or ({B}, {T}), got {adv.shape}")
        bad = ~np.isfinite(adv) & mask.any(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ESPOInputError(f"{name} has a non-finite value {adv[i]!r} for response {i}")
        adv = np.broadcast_to(adv[:, None], (B, T))
    elif adv.ndim == 2:
        if adv.shape != (B, T):
            raise ESPOInputError(f"{name} must have shape ({B},) or ({B}, {T}), got {adv.shape}")
    else:
        raise ESPOInputError(f"{name} must be 1-D [B] or 2-D [B, T], got shape {adv.shape}")
    return finite_on(adv, mask, name)


def token_inputs(logp, old_logp, mask, names=("logp", "old_logp")):
    """[ESPO-INPUT] [BASE-INPUT] Validate the [B, T] log-probability pair and the mask; return
    cleaned copies."""
    lp = as_real_array(logp, names[0], ndim=2)
    olp = as_real_array(old_logp, names[1])
    check_shape(olp, names[1], lp.shape, names[0])
    m = as_mask(mask, "mask", lp.shape)
    return finite_on(lp, m, names[0]), finite_on(olp, m, names[1]), m


def log_ratio(lp: np.ndarray, olp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log r = logp - old_logp on the response tokens (0 on padding) [ESPO-RATIO]; a difference
    of finite values that leaves the float64 range is an error naming both arguments."""
    with np.errstate(over="ignore", invalid="ignore"):
        log_r = np.where(mask, lp - olp, 0.0)
    raise_at_first(~np.isfinite(log_r),
                   lambda idx: f"logp - old_logp overflows float64 at response position {list(idx)} "
                               f"(logp {lp[idx]!r}, old_logp {olp[idx]!r})")
    return log_r


def loss_overflow(what: str, dtype: str = "float64") -> ESPOInputError:
    """[ESPO-INPUT] [BASE-INPUT] The error for a loss (or its gradient) that leaves the float
    range although every input is finite: ``what`` names the argument and its size."""
    return ESPOInputError(f"the loss overflows {dtype}: {what}; scale the advantages down")
