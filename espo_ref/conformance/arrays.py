"""Portable, pickle-free encoding of golden arrays as JSON.

An array is ``{"dtype": D, "shape": [...], "data": [...]}`` with row-major data. Floats
are written with Python's shortest round-trip repr (exact on reading back); non-finite
values as the strings "NaN", "Infinity", "-Infinity". ``dtype`` "bfloat16" marks float
data whose values are exactly representable in bfloat16 (stored as float64 numbers).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

FLOAT_DTYPES = ("float64", "float32", "bfloat16")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16 (ties to even), returned as float64."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values of x as they are after a cast to dtype (kept as float64)."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return x
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "bfloat16":
        return round_to_bfloat16(x)
    raise ValueError(f"unknown float dtype {dtype!r}")


def _encode_float(v: float) -> Any:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return float(v)


def encode(x, dtype: str | None = None) -> dict:
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return {"dtype": "bool", "shape": list(arr.shape), "data": [bool(v) for v in arr.reshape(-1)]}
    if arr.dtype.kind in "iu":
        return {"dtype": "int64", "shape": list(arr.shape), "data": [int(v) for v in arr.reshape(-1)]}
    if arr.dtype.kind == "f":
        return {"dtype": dtype or "float64", "shape": list(arr.shape),
                "data": [_encode_float(float(v)) for v in arr.reshape(-1)]}
    raise TypeError(f"cannot encode an array of dtype {arr.dtype}")


def decode(obj, max_elements: int | None = None) -> np.ndarray:
    """The float64 / int64 / bool numpy array of an encoded array (bfloat16 as float64).

    Checked before anything is allocated: the keys, the dtype, a shape of non-negative ints
    whose product (at most ``max_elements``) is the length of ``data``, and the type of every
    element (bool for bool, int for int64, a number or a non-finite string for floats).
    ValueError names what is wrong."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"an encoded array has the keys dtype, shape and data; got {keys}")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 8:
        raise ValueError(f"shape must be a list of at most 8 non-negative ints, got {shape!r}"[:200])
    size = math.prod(shape)
    if max_elements is not None and size > max_elements:
        raise ValueError(f"shape {shape} has {size} elements, more than the limit {max_elements}")
    if not isinstance(data, list) or len(data) != size:
        n = len(data) if isinstance(data, list) else type(data).__name__
        raise ValueError(f"data must be a list of {size} elements for shape {shape}, got {n}")
    if dtype == "bool":
        if not all(type(v) is bool for v in data):
            raise ValueError("bool data holds a value that is not true or false")
        return np.array(data, dtype=bool).reshape(shape)
    if dtype == "int64":
        if not all(type(v) is int and -(2**63) <= v < 2**63 for v in data):
            raise ValueError("int64 data holds a value that is not an int64")
        return np.array(data, dtype=np.int64).reshape(shape)
    if dtype in FLOAT_DTYPES:
        try:
            values = [_NONFINITE[v] if isinstance(v, str) else v for v in data]
        except KeyError as exc:
            raise ValueError(f"{dtype} data holds the string {exc.args[0]!r}"[:200]) from None
        if not all(type(v) in (float, int) for v in values):
            raise ValueError(f"{dtype} data holds a value that is not a number")
        try:
            return np.array(values, dtype=np.float64).reshape(shape)
        except OverflowError:
            raise ValueError(f"{dtype} data holds an int too large for a float64") from None
    raise ValueError(f"unknown encoded dtype {dtype!r}"[:200])


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def checksum(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
