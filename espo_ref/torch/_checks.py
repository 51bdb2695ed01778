"""Input validation of the torch backend, message for message the numpy core's [ESPO-INPUT].

Every check raises ``espo_ref.ESPOInputError`` with the text the numpy core gives for the
same input (dtype names, shapes and values are printed the numpy way). Finding a bad value
needs the tensor's contents on the host, so every value check is a host-device sync; the
public functions take a keyword-only ``validate`` (default True) that skips them. Padding
positions (mask False) may hold anything, NaN included: ``finite_on`` replaces them by 0
with ``torch.where`` before any arithmetic, so that neither values nor gradients leak.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import ESPOInputError

_NUMPY_NAMES = {
    torch.bool: "bool",
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
}


def dtype_name(dtype: torch.dtype) -> str:
    """The numpy spelling of a torch dtype (``torch.float32`` -> ``float32``)."""
    return _NUMPY_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def is_real(dtype: torch.dtype) -> bool:
    """Real numeric: floating or integer (numpy kinds f, i, u); not bool, not complex."""
    return dtype != torch.bool and not dtype.is_complex


def is_integer(dtype: torch.dtype) -> bool:
    return is_real(dtype) and not dtype.is_floating_point


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 input, float32 for everything else (bfloat16/float16 upcast)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def coerce(x, device=None, name: str | None = None):
    """(tensor or None, numpy dtype name). Non-tensors go through ``np.asarray`` first, so a
    Python list of floats is float64 as in the core; None is returned for dtypes torch
    cannot hold (object, strings), whose numpy name the caller puts in its message."""
    if isinstance(x, torch.Tensor):
        if x.is_meta:  # a shape without data: nothing to compute on, and torch's own error names nothing
            raise ESPOInputError(f"{name or 'an input'} is a tensor on the meta device (shape {tuple(x.shape)}, "
                                 f"no data); pass a tensor with values")
        return (x if device is None else x.to(device)), dtype_name(x.dtype)
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        return None, str(arr.dtype)
    if arr.dtype.kind == "u" and arr.dtype != np.uint8:
        arr = arr.astype(np.int64)
    # ascontiguousarray makes a 0-d array 1-d: keep the shape, so that torch sees what numpy sees
    t = torch.from_numpy(np.ascontiguousarray(arr).reshape(arr.shape))
    return (t if device is None else t.to(device)), str(arr.dtype)


def host_array(t: torch.Tensor) -> np.ndarray:
    """The tensor's contents as a numpy array (bfloat16 as float32, which numpy lacks)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    return t.numpy()


def scalar_repr(t: torch.Tensor, idx) -> str:
    """``repr`` of one element as the numpy scalar of the same dtype (np.int64(2), ...)."""
    return repr(host_array(t[tuple(idx)])[()])


def float_repr(t: torch.Tensor, idx) -> str:
    """``repr`` of one element after the core's cast to float64 (np.float64(nan), ...)."""
    return repr(np.float64(host_array(t[tuple(idx)]).astype(np.float64)[()]))


def first_index(bad: torch.Tensor) -> list[int]:
    """Row-major first True position (a host sync)."""
    return [int(i) for i in bad.nonzero()[0].tolist()]


def raise_at_first(bad: torch.Tensor, message: Callable[[list[int]], str]) -> None:
    """[ESPO-INPUT] Raise ``ESPOInputError(message(index))`` at the first True of ``bad``
    (row-major); nothing when all are False. A host sync."""
    if bool(bad.any()):
        raise ESPOInputError(message(first_index(bad)))


def as_real_array(x, name: str, ndim: int | None = None, device=None) -> torch.Tensor:
    """A real (non-bool, non-complex) tensor, in its own dtype; the core's as_real_array."""
    t, numpy_name = coerce(x, device, name)
    if t is None or not is_real(t.dtype):
        raise ESPOInputError(f"{name} must be a real numeric array, got dtype {numpy_name}")
    if ndim is not None and t.ndim != ndim:
        raise ESPOInputError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def as_mask(mask, name: str, shape: tuple[int, ...], device=None, validate: bool = True) -> torch.Tensor:
    """Boolean mask of the given shape; accepts bool or numeric 0/1 tensors."""
    t, numpy_name = coerce(mask, device, name)
    got = tuple(t.shape) if t is not None else tuple(np.asarray(mask).shape)
    if got != tuple(shape):
        raise ESPOInputError(f"{name} must have shape {tuple(shape)}, got {got}")
    if t is not None and t.dtype == torch.bool:
        return t
    if t is None or not is_real(t.dtype):
        raise ESPOInputError(f"{name} must be boolean or 0/1, got dtype {numpy_name}")
    if validate:
        raise_at_first((t != 0) & (t != 1),
                       lambda idx: f"{name} must be boolean or 0/1, found {scalar_repr(t, idx)} at index {idx}")
    return t != 0


def check_shape(t: torch.Tensor, name: str, shape: tuple[int, ...], ref: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ESPOInputError(
            f"{name} must have the shape of {ref} {tuple(shape)}, got {tuple(t.shape)}"
        )


def require_finite(t: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    """[ESPO-INPUT] Raise if ``t`` is non-finite at a response position, naming it (a host sync)."""
    raise_at_first(mask & ~torch.isfinite(t),
                   lambda idx: f"{name} has a non-finite value {float_repr(t, idx)} at response position {idx}")


def zero_padding(t: torch.Tensor, mask_f: torch.Tensor) -> torch.Tensor:
    """[ESPO-INPUT] ``t`` in the dtype of ``mask_f`` (the mask as 0/1) with padding 0: a product by the mask,
    NaN (anything non-finite times 0) back to 0. Equal to ``torch.where(mask, t, 0)`` for values
    finite on the mask (validated), several times cheaper on CPU."""
    return torch.nan_to_num(t.to(mask_f.dtype) * mask_f, nan=0.0)


def finite_on(t: torch.Tensor, mask: torch.Tensor, name: str, dtype: torch.dtype,
              validate: bool = True) -> torch.Tensor:
    """Raise if t is non-finite at a response position; return t in ``dtype`` with padding
    replaced by 0 (``torch.where`` on the input, so padding gets a zero, not NaN, gradient)."""
    if validate:
        require_finite(t, mask, name)
    return torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device)).to(dtype)


def _float_below(bound: float, dtype: torch.dtype) -> float:
    """Largest value of ``dtype`` <= bound: for x of that dtype, x > bound iff x > it."""
    if dtype == torch.float64:
        return bound
    top = float(np.finfo(np.float32).max)
    if abs(bound) > top:  # beyond float32: the largest finite float32 below it, or -inf
        return top if bound > 0 else -np.inf
    f = np.float32(bound)
    if float(f) > bound:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _float_above(bound: float, dtype: torch.dtype) -> float:
    """Smallest value of ``dtype`` >= bound: for x of that dtype, x < bound iff x < it."""
    if dtype == torch.float64:
        return bound
    top = float(np.finfo(np.float32).max)
    if abs(bound) > top:  # beyond float32: the smallest finite float32 above it, or +inf
        return -top if bound < 0 else np.inf
    f = np.float32(bound)
    if float(f) < bound:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def entropy_in_range(entropy: torch.Tensor, mask: torch.Tensor, log_vocab: float, tol: float) -> None:
    """[ESPO-ENT-DOMAIN] Eq. 6 bounds: 0 <= e <= log|V| up to an absolute tolerance, decided
    exactly as the core decides it in float64 (the float64 bounds are rounded outward)."""
    lo = _float_above(-tol, entropy.dtype)
    hi = _float_below(log_vocab + tol, entropy.dtype)
    raise_at_first(mask & ((entropy < lo) | (entropy > hi)),
                   lambda idx: f"entropy must lie in [0, log(vocab_size)] = [0, {log_vocab:.6g}] "
                               f"(tolerance {tol:g}); found {float_repr(entropy, idx)} at response position {idx}")


def advantages_2d(advantages, mask: torch.Tensor, name: str = "advantages", *, dtype: torch.dtype,
                  validate: bool = True, mask_f: torch.Tensor | None = None) -> torch.Tensor:
    """[ESPO-INPUT] [BASE-INPUT] Advantages given per response [B] or per token [B, T], as [B, T]
    with padding 0. Detached: advantages are constants of every loss.

    ``mask_f`` (keyword-only): the mask as 0/1 in ``dtype``; given, per-response advantages come
    back as a [B, 1] column (0 for rows without response tokens) that broadcasts over the
    tokens, and per-token ones are zeroed by a product (no ``torch.where``)."""
    adv = as_real_array(advantages, name, device=mask.device).detach()
    B, T = mask.shape
    if adv.ndim == 1:
        if tuple(adv.shape) != (B,):
            raise ESPOInputError(f"{name} must have shape ({B},) or ({B}, {T}), got {tuple(adv.shape)}")
        if validate:
            bad = ~torch.isfinite(adv) & mask.any(dim=1)
            if bool(bad.any()):
                i = first_index(bad)[0]
                raise ESPOInputError(f"{name} has a non-finite value {float_repr(adv, [i])} for response {i}")
        if mask_f is not None:
            rows = torch.count_nonzero(mask, dim=1) > 0
            return zero_padding(adv, rows.to(dtype))[:, None]
        adv = adv[:, None].expand(B, T)
    elif adv.ndim == 2:
        if tuple(adv.shape) != (B, T):
            raise ESPOInputError(f"{name} must have shape ({B},) or ({B}, {T}), got {tuple(adv.shape)}")
    else:
        raise ESPOInputError(f"{name} must be 1-D [B] or 2-D [B, T], got shape {tuple(adv.shape)}")
    if mask_f is not None:
        if validate:
            require_finite(adv, mask, name)
        return zero_padding(adv, mask_f)
    return finite_on(adv, mask, name, dtype, validate)


def token_inputs(logp, old_logp, mask, names=("logp", "old_logp"), *, validate: bool = True):
    """[ESPO-INPUT] [BASE-INPUT] Validate the [B, T] log-probability pair and the mask; return the pair in the compute
    dtype with padding zeroed (logp keeps its autograd graph; old_logp is detached, a
    constant of every loss [ESPO-OBJ], even when the caller passes logp itself), and the
    boolean mask."""
    lp = as_real_array(logp, names[0], ndim=2)
    olp = as_real_array(old_logp, names[1], device=lp.device).detach()
    check_shape(olp, names[1], tuple(lp.shape), names[0])
    m = as_mask(mask, "mask", tuple(lp.shape), device=lp.device, validate=validate)
    dtype = compute_dtype(lp)
    return (finite_on(lp, m, names[0], dtype, validate),
            finite_on(olp, m, names[1], dtype, validate), m)


def log_ratio(lp: torch.Tensor, olp: torch.Tensor, mask: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """log r = logp - old_logp on the response tokens [ESPO-RATIO], from the pair ``token_inputs``
    returns (0 on padding, so 0 there); a difference of finite values that leaves the range
    of the compute dtype is an error naming both arguments (a host sync, only if ``validate``)."""
    log_r = lp - olp  # both are 0 on padding (finite_on)
    if validate:
        raise_at_first(~torch.isfinite(log_r.detach()),
                       lambda idx: f"logp - old_logp overflows {dtype_name(log_r.dtype)} at response position {idx} "
                                   f"(logp {float_repr(lp, idx)}, old_logp {float_repr(olp, idx)})")
    return log_r


def bound(value: float, dtype: torch.dtype) -> float:
    """[ESPO-RATIO-CLAMP] [ESPO-CLIPMASK] A Python bound (clamp, clip or dual-clip limit) as a
    constant of ``dtype``: beyond the dtype's range it saturates to its largest finite value,
    which every finite value of the dtype compares with exactly as with the bound (torch
    refuses an out-of-range scalar)."""
    top = float(torch.finfo(dtype).max)
    return max(min(float(value), top), -top)
