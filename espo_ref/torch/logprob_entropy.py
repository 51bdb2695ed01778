"""Per-token log-probabilities and entropies from hidden states, never all logits at once [ESPO-ENT].

ESPO needs, for every response token t with target y_t, the old policy's
``logp_t = log softmax(z_t)[y_t]`` and its entropy ``e_t = -sum_v p_v log p_v`` (Eq. 6,
[ESPO-ENT]) over the whole vocabulary, where ``z_t = (h_t @ W.T + b) / T`` are the logits
of the lm-head at the sampling temperature T; during the update, the current policy's
``logp_t`` with a gradient. With V = 151,936 and 16k tokens the full logits are tens of
GB, so they are never formed whole here.

Two implementations, one switch (``impl``):

* ``"torch"`` — pure torch, any device. The forward walks the rows in chunks of
  ``chunk_size``: logits of a chunk in float32 (matrix product in the input dtype with
  float32 accumulation); with ``m = max z``, ``e = exp(z - m)``, ``s = sum e``:
  ``lse = m + log s``, ``logp = z[y] - lse``, ``entropy = log s - sum(e (z - m)) / s``. For bfloat16/float16 inputs the product is *not*
  rounded to the input dtype before ``.float()`` (that rounding alone costs up to
  |z| / 256 in logp): on CUDA it is written in float32 by ``torch.mm(out_dtype=)``; where
  that is missing (CPU, older torch) the operands are upcast to float32 first (exact; a
  float32 copy of the weight for the call). Only ``hidden, weight, bias, targets`` and ``lse [N]``
  are saved for backward; the backward walks the vocabulary in slices (all rows, about
  ``chunk_size * V`` logits per slice), recomputes the slice's logits and forms
  ``g = (onehot(y) - p) * grad_logp / T`` (d logp / d z, chained through the 1/T), then
  ``grad_hidden += g @ W_slice`` (accumulated in float32), ``grad_weight[slice] = g.T @ h``
  and ``grad_bias[slice] = sum_n g``. Slicing the vocabulary rather than the rows in the
  backward gives each element of ``grad_weight`` a single product over all N rows (one
  rounding to the weight dtype) at the cost of an ``[N, H]`` float32 accumulator.
* ``"triton"`` — fused kernels (``_triton_logprob``): the forward streams the vocabulary in
  tiles with an online log-sum-exp and online entropy and writes no logits at all; the
  backward writes ``g`` slice by slice from a fused kernel and does the two products with
  cuBLAS. CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (tests).
* ``"auto"`` — ``"triton"`` for CUDA tensors when triton is importable, else ``"torch"``.

Peak extra memory is O(chunk_size x V) (plus ``[N, H]`` float32 in the backward), never
O(N x V). Default ``chunk_size``: the largest number of rows whose float32 logits fit in
1 GiB (``default_chunk_size``), rounded down to a multiple of 64 when above 64; for
V = 151,936 that is 1,728 rows.

Outputs are float32 (float64 for float64 inputs, so ``torch.autograd.gradcheck`` applies);
``logp`` carries the gradient, ``entropy`` is detached and clamped below at 0
(as [ESPO-ENT]).
"""

from __future__ import annotations

import math

import torch

from ..config import is_integer_number, is_real_number
from ..errors import ESPOInputError

__all__ = [
    "token_logprobs_and_entropy",
    "token_logprobs_and_entropy_from_logits",
    "default_chunk_size",
    "triton_available",
]

CHUNK_BYTES = 1 << 30  # float32 logits of one chunk: at most 1 GiB by default
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_IMPLS = ("auto", "torch", "triton")


def default_chunk_size(vocab_size: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """Rows whose float32 logits [rows, vocab_size] fit in ``budget_bytes`` (>= 1; multiple of 64 above 64)."""
    rows = max(1, budget_bytes // (4 * max(1, int(vocab_size))))
    return rows - rows % 64 if rows > 64 else rows


_TRITON = None  # the imported _triton_logprob module, False when triton is missing


def _triton_module():
    global _TRITON
    if _TRITON is None:
        try:
            from . import _triton_logprob
        except ImportError:
            _TRITON = False
        else:
            _TRITON = _triton_logprob
    return _TRITON


def triton_available() -> bool:
    """True when triton imports (the fused path can run on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    return bool(_triton_module())


# --------------------------------------------------------------------------- validation


def _check_temperature(temperature) -> float:
    if not is_real_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise ESPOInputError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_chunk(chunk_size, vocab_size: int) -> int:
    if chunk_size is None:
        return default_chunk_size(vocab_size)
    if not is_integer_number(chunk_size) or chunk_size < 1:
        raise ESPOInputError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    return int(chunk_size)


def _check_float(x, name: str, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ESPOInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ESPOInputError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != ndim:
        raise ESPOInputError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")


def _check_finite(x, name: str) -> None:
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        idx = [int(i) for i in bad.nonzero()[0]]
        raise ESPOInputError(f"{name} has a non-finite value at index {idx}")


def _check_targets(targets, n: int, vocab_size: int, device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise ESPOInputError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ESPOInputError(f"targets must be int64 (or int32), got {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ESPOInputError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
    if targets.device != device:
        raise ESPOInputError(f"targets must be on {device}, got {targets.device}")
    if n:
        bad = (targets < 0) | (targets >= vocab_size)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ESPOInputError(f"targets must lie in [0, {vocab_size}), got {int(targets[i])} at index {i}")
    return targets.long().contiguous()


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- pure torch


_MM_OUT_DTYPE: dict[torch.device, bool] = {}  # CUDA device -> torch.mm(..., out_dtype=float32) works


def _mm_out_dtype_works(device: torch.device) -> bool:
    if device not in _MM_OUT_DTYPE:
        try:
            x = torch.ones((2, 2), dtype=torch.bfloat16, device=device)
            _MM_OUT_DTYPE[device] = torch.mm(x, x, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE[device] = False
    return _MM_OUT_DTYPE[device]


def _operand(x: torch.Tensor) -> torch.Tensor:
    """x as a matrix-product operand: as is, or upcast to float32 (exact) for a half dtype whose
    product torch cannot write in float32 directly (CPU; CUDA without ``mm(out_dtype=)``)."""
    if x.dtype in (torch.float16, torch.bfloat16) and not (x.is_cuda and _mm_out_dtype_works(x.device)):
        return x.float()
    return x


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of operands from ``_operand``: float32 accumulation, float32 (float64) result, no rounding to half."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


def _logits(hidden, weight, bias, temperature: float) -> torch.Tensor:
    """[ESPO-ENT] z = (hidden @ weight.T + bias) / T in float32 (float64 for float64 inputs); operands from _operand."""
    z = _mm(hidden, weight.t())
    if bias is not None:
        z += bias
    if temperature != 1.0:
        z /= temperature
    return z


def _chunk_stats(z: torch.Tensor, targets: torch.Tensor, with_entropy: bool, neg_inf: bool = False):
    """[ESPO-ENT] (lse, logp, entropy or None) of logits z [C, V]; z is overwritten.

    With m = max z, e = exp(z - m), s = sum e: lse = m + log s, logp = z_y - lse and
    entropy = log s - sum(e (z - m)) / s (= -sum p log p, Eq. 6), one exp per logit.
    ``neg_inf``: z may hold -inf (probability zero; contributes 0, the limit of p log p).
    """
    m = z.amax(dim=-1, keepdim=True)
    z.sub_(m)
    z_target = z.gather(1, targets[:, None])[:, 0]
    if neg_inf:
        z.clamp_min_(-1e30)  # exp underflows to 0 all the same, and 0 * -1e30 = 0 where 0 * -inf is NaN
    e = torch.exp(z)
    s = e.sum(dim=-1)
    log_s = torch.log(s)
    lse = m[:, 0] + log_s
    logp = z_target - log_s
    if not with_entropy:
        return lse, logp, None
    entropy = (log_s - e.mul_(z).sum(dim=-1) / s).clamp_min_(0.0)
    return lse, logp, entropy


def _forward_torch(hidden, weight, bias, targets, temperature, chunk_size, with_entropy):
    n = hidden.shape[0]
    acc = _out_dtype(hidden.dtype)
    lse = torch.empty(n, dtype=acc, device=hidden.device)
    logp = torch.empty(n, dtype=acc, device=hidden.device)
    entropy = torch.empty(n, dtype=acc, device=hidden.device) if with_entropy else None
    weight_op = _operand(weight)
    bias_acc = bias.to(acc) if bias is not None else None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        z = _logits(_operand(hidden[start:stop]), weight_op, bias_acc, temperature)
        lse_c, logp_c, ent_c = _chunk_stats(z, targets[start:stop], with_entropy)
        del z
        lse[start:stop] = lse_c
        logp[start:stop] = logp_c
        if with_entropy:
            entropy[start:stop] = ent_c
    return logp, entropy, lse


def _grad_logits_torch(hidden_op, weight_s, bias_s, targets, lse, scale, v0, temperature, g_dtype):
    """g = (onehot(y) - exp(z - lse)) * scale for the vocabulary slice starting at v0, in g_dtype."""
    z = _logits(hidden_op, _operand(weight_s), bias_s.to(lse.dtype) if bias_s is not None else None, temperature)
    g = z.sub_(lse[:, None]).exp_().mul_(-scale[:, None])
    rows = ((targets >= v0) & (targets < v0 + weight_s.shape[0])).nonzero()[:, 0]
    g.index_put_((rows, targets[rows] - v0), scale[rows], accumulate=True)
    return g.to(g_dtype)


class _LinearLogprobEntropy(torch.autograd.Function):
    """logp (differentiable in hidden, weight, bias) and entropy (detached); see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, impl, overrides):
        if impl == "triton":
            logp, entropy, lse = _triton_module().forward(hidden, weight, bias, targets, temperature, overrides)
            if not with_entropy:
                entropy = None
        else:
            logp, entropy, lse = _forward_torch(hidden, weight, bias, targets, temperature, chunk_size, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_size, ctx.impl, ctx.overrides = temperature, chunk_size, impl, overrides
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = grad_weight = grad_bias = None
        if grad_logp is None or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None, None, None
        n, _ = hidden.shape
        vocab = weight.shape[0]
        acc = lse.dtype
        scale = grad_logp.to(acc).contiguous() / ctx.temperature  # d logp / d z = (onehot - p) / T
        # vocabulary slice of about chunk_size * V logits over all n rows
        v_slice = max(1, min(vocab, (ctx.chunk_size * vocab) // max(n, 1)))
        if need_h:
            acc_hidden = torch.zeros(hidden.shape, dtype=acc, device=hidden.device)
        if need_w:
            grad_weight = torch.empty_like(weight)
        if need_b:
            grad_bias = torch.empty(vocab, dtype=acc, device=hidden.device)
        tri = _triton_module() if ctx.impl == "triton" else None
        if tri is not None:
            g = torch.empty((n, v_slice), dtype=hidden.dtype, device=hidden.device)
        hidden_op = _operand(hidden)
        for v0 in range(0, vocab, v_slice):
            v1 = min(v0 + v_slice, vocab)
            w_s = weight[v0:v1]
            b_s = bias[v0:v1] if bias is not None else None
            if tri is not None:
                g_s = tri.grad_logits(hidden, w_s, b_s, targets, lse, scale, v0, ctx.temperature, g[:, : v1 - v0],
                                      ctx.overrides)
            else:
                g_s = _grad_logits_torch(hidden_op, w_s, b_s, targets, lse, scale, v0, ctx.temperature, hidden.dtype)
            if need_b:
                grad_bias[v0:v1] = g_s.sum(dim=0, dtype=acc)
            g_op = _operand(g_s)
            if need_h:
                acc_hidden += _mm(g_op, _operand(w_s))
            if need_w:
                if g_op.dtype == weight.dtype == hidden_op.dtype:  # one product over all N rows, written in place
                    torch.mm(g_op.t(), hidden_op, out=grad_weight[v0:v1])
                else:  # operands upcast to float32 (CPU, half dtype): round once on the copy
                    grad_weight[v0:v1] = _mm(g_op.t(), hidden_op)
        if need_h:
            grad_hidden = acc_hidden.to(hidden.dtype)
        if need_b:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _choose_impl(impl, device, dtype=torch.float32) -> str:
    if impl not in _IMPLS:
        raise ESPOInputError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        fused = device.type == "cuda" and dtype != torch.float64 and triton_available()
        return "triton" if fused else "torch"
    if impl == "triton":
        if dtype == torch.float64:
            raise ESPOInputError("impl='triton' takes float16, bfloat16 or float32 hidden/weight, got float64")
        tri = _triton_module()
        if not tri:
            raise ESPOInputError("impl='triton' needs the triton package, which is not importable")
        if device.type != "cuda" and not tri.INTERPRET:
            raise ESPOInputError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {device}")
    return impl


def token_logprobs_and_entropy(hidden, weight, targets, temperature=1.0, bias=None, chunk_size=None,
                               with_entropy=True, impl="auto", _triton_config=None):
    """[ESPO-ENT] (logp [N], entropy [N] or None) of logits (hidden @ weight.T + bias) / temperature, chunked.

    ``hidden [N, H]``, ``weight [V, H]`` (the lm-head), optional ``bias [V]``, all one float
    dtype on one device; ``targets [N]`` int64 in ``[0, V)``. ``logp[n] = log softmax(z_n)[y_n]``
    is differentiable w.r.t. hidden, weight and bias; ``entropy[n] = -sum_v p log p`` (Eq. 6)
    is detached. Peak extra memory O(chunk_size x V); see the module docstring.
    """
    _check_float(hidden, "hidden", 2)
    _check_float(weight, "weight", 2)
    n, h = hidden.shape
    vocab = weight.shape[0]
    if weight.shape[1] != h:
        raise ESPOInputError(f"weight must have shape (V, {h}) to match hidden {tuple(hidden.shape)}, got {tuple(weight.shape)}")
    if vocab < 1:
        raise ESPOInputError("weight must have at least one row (vocabulary item)")
    for name, x in (("weight", weight),):
        if x.dtype != hidden.dtype or x.device != hidden.device:
            raise ESPOInputError(f"{name} must have hidden's dtype {hidden.dtype} and device {hidden.device}, "
                                 f"got {x.dtype} on {x.device}")
    if bias is not None:
        _check_float(bias, "bias", 1)
        if bias.shape[0] != vocab:
            raise ESPOInputError(f"bias must have shape ({vocab},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise ESPOInputError(f"bias must have hidden's dtype {hidden.dtype} and device {hidden.device}, "
                                 f"got {bias.dtype} on {bias.device}")
    temperature = _check_temperature(temperature)
    chunk_size = _check_chunk(chunk_size, vocab)
    if not isinstance(with_entropy, bool):
        raise ESPOInputError(f"with_entropy must be a bool, got {with_entropy!r}")
    impl = _choose_impl(impl, hidden.device, hidden.dtype) if n else "torch"  # nothing to launch a kernel for
    targets = _check_targets(targets, n, vocab, hidden.device)
    _check_finite(hidden, "hidden")
    _check_finite(weight, "weight")
    if bias is not None:
        _check_finite(bias, "bias")
    hidden_c, weight_c = hidden.contiguous(), weight.contiguous()
    bias_c = bias.contiguous() if bias is not None else None
    return _LinearLogprobEntropy.apply(hidden_c, weight_c, bias_c, targets, temperature, chunk_size,
                                       with_entropy, impl, _triton_config)


# --------------------------------------------------------------------------- from logits


class _LogitsLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_size):
        n = logits.shape[0]
        acc = _out_dtype(logits.dtype)
        lse = torch.empty(n, dtype=acc, device=logits.device)
        logp = torch.empty(n, dtype=acc, device=logits.device)
        entropy = torch.empty(n, dtype=acc, device=logits.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            z = logits[start:stop].to(acc) / temperature  # a float32 (float64) copy of the chunk
            lse[start:stop], logp[start:stop], entropy[start:stop] = _chunk_stats(z, targets[start:stop], True,
                                                                                  neg_inf=True)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        if grad_logp is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        n = logits.shape[0]
        scale = grad_logp.to(lse.dtype) / ctx.temperature
        grad = torch.empty_like(logits)
        for start in range(0, n, ctx.chunk_size):
            stop = min(start + ctx.chunk_size, n)
            z = logits[start:stop].to(lse.dtype) / ctx.temperature
            sc = scale[start:stop]
            g = z.sub_(lse[start:stop, None]).exp_().mul_(-sc[:, None])
            g[torch.arange(stop - start, device=g.device), targets[start:stop]] += sc
            grad[start:stop] = g
        return grad, None, None, None


def token_logprobs_and_entropy_from_logits(logits, targets, temperature=1.0, chunk_size=None):
    """[ESPO-ENT] (logp [N], entropy [N]) of given logits [N, V] / temperature, chunked over rows.

    ``logp`` is differentiable w.r.t. logits, ``entropy`` (Eq. 6) is detached. A logit of
    ``-inf`` is a vocabulary item of probability zero; NaN, ``+inf`` and a row that is
    ``-inf`` everywhere are errors (as [ESPO-ENT]). Extra memory O(chunk_size x V).
    """
    _check_float(logits, "logits", 2)
    n, vocab = logits.shape
    if vocab < 1:
        raise ESPOInputError(f"logits must have a non-empty vocabulary axis, got shape {tuple(logits.shape)}")
    temperature = _check_temperature(temperature)
    chunk_size = _check_chunk(chunk_size, vocab)
    targets = _check_targets(targets, n, vocab, logits.device)
    if n:
        bad = torch.isnan(logits.detach()) | torch.isposinf(logits.detach())
        if bool(bad.any()):
            idx = [int(i) for i in bad.nonzero()[0]]
            raise ESPOInputError(f"logits has a NaN or +inf value at index {idx}")
        dead = torch.isneginf(logits.detach()).all(dim=-1)
        if bool(dead.any()):
            raise ESPOInputError(f"logits is -inf over the whole vocabulary at row {int(dead.nonzero()[0, 0])}")
    return _LogitsLogprobEntropy.apply(logits, targets, temperature, chunk_size)
