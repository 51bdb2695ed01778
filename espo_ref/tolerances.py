"""The one tolerance table of the project: per backend and dtype, values and gradients apart.

A comparison passes when |got - want| <= atol + rtol * |want| elementwise (no scaling by
array size). ``want`` is always the numpy float64 reference. Each row says why it is what
it is; a per-device slack joins a row by taking the max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reason: str


# (backend, input dtype, kind) -> Tolerance; kind is "value" or "grad".
TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    ("numpy", "float64", "value"): Tolerance(1e-12, 1e-12, "float64 reference vs exact/loop oracle: summation order only"),
    ("numpy", "float64", "grad"): Tolerance(1e-12, 1e-12, "closed-form gradient, same arithmetic as the value"),
    ("torch", "float64", "value"): Tolerance(1e-12, 1e-12, "same float64 arithmetic, different reduction order"),
    ("torch", "float64", "grad"): Tolerance(1e-12, 1e-12, "autograd through the same float64 graph"),
    ("torch", "float32", "value"): Tolerance(2e-5, 1e-6, "float32 exp/mean of log-ratios: ~1e-7 relative per op, a few dozen ops"),
    ("torch", "float32", "grad"): Tolerance(2e-4, 1e-7, "float32 gradient; clip decisions are taken on float32 values"),
    ("torch", "bfloat16", "value"): Tolerance(1e-2, 1e-3, "bfloat16 inputs (8-bit mantissa) upcast to float32 inside"),
    ("torch", "bfloat16", "grad"): Tolerance(1e-1, 1e-3, "bfloat16 inputs; gradient returned in bfloat16"),
    # espo_ref.torch.token_logprobs_and_entropy[_from_logits] [ESPO-ENT] vs float64 log_softmax of the same
    # (already rounded) inputs. Values are checked on logits bounded by |z| <= 100 (the tests' bound);
    # gradients are compared after dividing got and want by max|want| of the tensor (its scale).
    ("torch-logprob", "float64", "value"): Tolerance(1e-12, 1e-12, "float64 throughout; z_y - lse cancels to a few ulp(100) ~ 1e-14"),
    ("torch-logprob", "float64", "grad"): Tolerance(1e-12, 1e-12, "float64 throughout, relative to max|want|"),
    ("torch-logprob", "float32", "value"): Tolerance(1e-5, 5e-5, "float32 logits |z| <= 100: z_y - lse and lse - sum p z cancel to a few ulp(100) ~ 3e-5"),
    ("torch-logprob", "float32", "grad"): Tolerance(1e-4, 1e-5, "relative to max|want|: float32 softmax, products over V and N rows"),
    ("torch-logprob", "bfloat16", "value"): Tolerance(1e-5, 5e-5, "bf16 inputs are exact in float32 and the product is kept in float32 (never rounded to bf16): as float32"),
    ("torch-logprob", "bfloat16", "grad"): Tolerance(2e-2, 1e-2, "relative to max|want|: onehot - p rounded to bf16 for the bf16 product (2^-9), gradient returned in bf16 (2^-9)"),
    ("triton-logprob", "float32", "value"): Tolerance(1e-5, 5e-5, "fused kernel: float32 tl.dot (ieee) and online log-sum-exp, as the torch path"),
    ("triton-logprob", "float32", "grad"): Tolerance(1e-4, 1e-5, "relative to max|want|: as the torch path (same products, cuBLAS)"),
    ("triton-logprob", "bfloat16", "value"): Tolerance(1e-5, 5e-5, "bf16 operands, float32 accumulation in tl.dot, logits never rounded: as float32"),
    ("triton-logprob", "bfloat16", "grad"): Tolerance(2e-2, 1e-2, "relative to max|want|: onehot - p written in bf16 (2^-9), gradient returned in bf16 (2^-9)"),
}

# Central finite differences of the un-stop-gradient objective (float64, step 1e-6).
FINITE_DIFFERENCE = Tolerance(1e-5, 1e-8, "central differences: O(h^2) truncation plus O(eps/h) rounding")


def tolerance(backend: str, dtype: str, kind: str = "value") -> Tolerance:
    try:
        return TOLERANCES[(backend, dtype, kind)]
    except KeyError:
        raise KeyError(f"no tolerance for backend={backend!r}, dtype={dtype!r}, kind={kind!r}") from None


def compare(got, want, tol: Tolerance) -> dict:
    """Elementwise comparison report: ok, max abs / rel error, bad count and first bad index."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return {"ok": False, "reason": f"shape {got.shape} != {want.shape}", "bad": got.size, "n": want.size}
    diff = np.abs(got - want)
    both_inf = np.isinf(got) & np.isinf(want) & (np.sign(got) == np.sign(want))
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_inf | both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))
    bound = tol.atol + tol.rtol * np.abs(want)
    bad = ~(diff <= bound)
    with np.errstate(over="ignore", invalid="ignore"):
        rel = diff / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    out = {
        "ok": not bad.any(),
        "max_abs": float(np.nanmax(diff)) if diff.size else 0.0,
        "max_rel": float(np.nanmax(np.where(want != 0, rel, 0.0))) if diff.size else 0.0,
        "bad": int(bad.sum()),
        "n": int(want.size),
    }
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        out["first_bad"] = {"index": list(idx), "got": float(got[idx]), "want": float(want[idx])}
    return out
