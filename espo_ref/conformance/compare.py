"""[CONF-COMPARE] One output against its expected value, on the case's tolerance row."""

from __future__ import annotations

import numpy as np

from ..tolerances import Tolerance, compare
from .functions import FUNCTIONS, LOSS_CORE_FIELDS
from .golden import GoldenCase


def _tol(case: GoldenCase, kind: str) -> Tolerance:
    t = case.tolerance()[kind]
    return Tolerance(t["rtol"], t["atol"], "case tolerance")


def compare_field(case: GoldenCase, name: str, value, want) -> dict:
    if name == "metrics":
        keys = [k for k in want if k in value]
        rep = compare([value[k] for k in keys], [want[k] for k in keys], _tol(case, "value"))
        rep["keys"] = keys
        if not rep["ok"]:
            rep["first_bad"]["key"] = keys[rep["first_bad"]["index"][0]]
        return rep
    want_arr, got_arr = np.asarray(want), np.asarray(value)
    if want_arr.dtype.kind in "biu":
        if got_arr.shape != want_arr.shape:
            return {"ok": False, "reason": f"shape {got_arr.shape} != {want_arr.shape}", "bad": int(want_arr.size),
                    "n": int(want_arr.size)}
        if got_arr.dtype.kind == "f" and not np.all(np.isfinite(got_arr)):
            bad = ~np.isfinite(got_arr)
        else:
            bad = got_arr.astype(np.float64) != want_arr.astype(np.float64)
        rep = {"ok": not bad.any(), "bad": int(bad.sum()), "n": int(bad.size)}
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            g = got_arr[idx]
            rep["first_bad"] = {"index": list(idx), "got": int(g) if np.isfinite(g) else float(g),
                                "want": int(want_arr[idx])}
        return rep
    return compare(got_arr, want_arr, _tol(case, "grad" if name == "grad" else "value"))


def required_fields(case: GoldenCase, provides, fields) -> tuple[list[str], list[str]]:
    """[CONF-COMPARE] (required, not compared) output names of a value case.

    Required: for a loss, ``loss`` and ``grad`` plus every expected field the adapter provides
    (all of them when ``provides`` is None); for a component, its output. ``fields`` (the
    user's narrowing) removes the others; they are reported as not compared."""
    expected = [k for k in case.expected if k != "error"]
    spec = FUNCTIONS[case.function]
    if spec.is_loss:
        required = [k for k in expected if k in LOSS_CORE_FIELDS or provides is None or k in provides]
    else:
        required = list(expected)
    if fields is not None:
        required = [k for k in required if k in fields]
    return required, [k for k in expected if k not in required]
