"""The test suite's one ``assert_close`` (and ``assert_equal``), on the tolerance table.

``assert_close(got, want, tol, clause, what)`` passes when |got - want| <= atol + rtol |want|
elementwise (``espo_ref.tolerances.compare``: same-signed infinities and NaN against NaN are
equal). ``tol`` is a row of ``espo_ref.tolerances`` -- either the key
``(backend, dtype, kind)`` or the ``Tolerance`` that ``tolerance(...)`` returned. A call site
that needs another tolerance builds a ``Tolerance`` itself, and its ``reason`` field says why
at the call (``Tolerance(rtol, atol, reason)`` cannot be built without one). The failure
message names the clause, what was compared, the tolerance row and its reason, the
comparison report (max |abs diff|, max |rel diff|, k of n bad, first bad point) and
``context`` (a reproduction).

``got`` and ``want`` may be numpy arrays, Python numbers or lists, or torch tensors (moved
to the host as float64; torch itself is never imported here).

``error_messages(numpy_call, torch_call)`` asserts both calls raise ESPOInputError and returns
(torch's message, the core's message) for the torch-vs-numpy error tests to compare.
"""

from __future__ import annotations

import numpy as np
import pytest

from espo_ref.errors import ESPOInputError
from espo_ref.tolerances import Tolerance, compare, tolerance

__all__ = ["assert_close", "assert_equal", "error_messages", "is_close", "on_host", "resolve_tolerance"]


def on_host(x) -> np.ndarray:
    """A numpy array of ``x``; a torch tensor is detached, moved to the CPU, and floats are
    upcast to float64 (bfloat16 has no numpy dtype)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        return (x.double() if x.dtype.is_floating_point else x).numpy()
    return np.asarray(x)


def resolve_tolerance(tol) -> Tolerance:
    """A ``Tolerance``: given, or looked up in the table by its key ``(backend, dtype, kind)``."""
    if isinstance(tol, Tolerance):
        return tol
    if isinstance(tol, tuple) and len(tol) == 3:
        return tolerance(*tol)
    raise TypeError(f"tol must be a Tolerance or a (backend, dtype, kind) key of espo_ref.tolerances, got {tol!r}")


def _prepare(got, want, undefined_nan: bool):
    got = np.asarray(on_host(got), dtype=np.float64)
    want = np.asarray(on_host(want), dtype=np.float64)
    if undefined_nan and got.shape == want.shape:
        undefined = np.isnan(want)
        got, want = np.where(undefined, 0.0, got), np.where(undefined, 0.0, want)
    return got, want


def is_close(got, want, tol, *, undefined_nan: bool = False) -> bool:
    """The test of ``assert_close`` as a bool (for helpers that collect failures)."""
    got, want = _prepare(got, want, undefined_nan)
    return compare(got, want, resolve_tolerance(tol))["ok"]


def assert_close(got, want, tol, clause: str, what: str, context: str = "", *, undefined_nan: bool = False):
    """Assert ``got`` is within ``tol`` of ``want`` (the reference), naming ``clause``.

    ``undefined_nan``: a NaN in ``want`` means "undefined by the spec here" (the loop oracle
    returns NaN there), and that point is not compared.
    """
    tol = resolve_tolerance(tol)
    g, w = _prepare(got, want, undefined_nan)
    report = compare(g, w, tol)
    assert report["ok"], (
        f"[{clause}] {what}: {report} (tolerance rtol={tol.rtol:g}, atol={tol.atol:g}: {tol.reason}){context}")


def assert_equal(got, want, clause: str, what: str, context: str = ""):
    """Assert exact equality (group ids, flags, bit-identical repeats), naming ``clause``."""
    got, want = on_host(got), on_host(want)
    assert got.shape == want.shape, f"[{clause}] {what}: shape {got.shape} != {want.shape}{context}"
    got, want = np.atleast_1d(got), np.atleast_1d(want)
    bad = np.argwhere(got != want)
    assert bad.size == 0, (
        f"[{clause}] {what}: {len(bad)} of {got.size} differ; first at {tuple(bad[0].tolist())}: "
        f"got {got[tuple(bad[0])]!r}, want {want[tuple(bad[0])]!r}{context}")


def error_messages(numpy_call, torch_call) -> tuple[str, str]:
    """(got, want): the messages of the ESPOInputError that ``torch_call`` and ``numpy_call``
    (the reference) must each raise."""
    with pytest.raises(ESPOInputError) as want:
        numpy_call()
    with pytest.raises(ESPOInputError) as got:
        torch_call()
    return str(got.value), str(want.value)
