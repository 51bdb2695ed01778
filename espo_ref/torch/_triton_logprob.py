"""Fused Triton kernels for token log-probabilities and entropies from hidden states [ESPO-ENT].

Imported lazily by ``logprob_entropy`` only when ``triton`` is importable. Two kernels:

* ``_fwd_kernel`` — for a block of rows and a slice of the vocabulary it streams the
  vocabulary in tiles; each tile of logits ``z = (h @ W.T + b) / T`` is formed in float32
  registers by ``tl.dot`` over the hidden dimension and folded at once into a running
  max ``m``, ``s = sum exp(z - m)`` and ``u = sum exp(z - m) * (z - m)`` (the online
  log-sum-exp and online entropy), plus the target's logit. No logit is written to
  global memory. Per-slice partials are merged in torch (``_merge``):
  ``lse = m + log s``, ``logp = z_target - lse``, ``entropy = log s - u / s`` (Eq. 6:
  ``-sum p log p`` with ``log p = z - m - log s``). Tracking ``u`` relative to the
  running max, rather than ``t = sum exp(z - m) z``, keeps ``log s + m - t / s`` free of
  the cancellation between two large numbers when the logits are large.
* ``_grad_logits_kernel`` — backward: recomputes the logits of a vocabulary slice tile by
  tile and writes only ``g = (onehot(target) - exp(z - lse)) * grad_logp / T`` in the
  input dtype; ``grad_hidden = g @ W`` and ``grad_weight = g.T @ h`` are then plain
  matrix products (cuBLAS) in ``logprob_entropy``. The hidden size (thousands) is far
  too large to keep a row block's ``grad_hidden`` accumulator on chip, which is why this
  half of the backward is not fused (the flash-attention trick needs a head size of
  ~128); ``g`` takes O(N x vocab slice), bounded like the pure path's chunk.

Interpreter (``TRITON_INTERPRET=1``, CPU tensors): triton 3.9's interpreter computes
``tl.dot`` on bfloat16 operands wrongly (numpy has no bfloat16; the result is off by
~1e10), so with the interpreter the operands are upcast to float32 before ``tl.dot``
(``DOT_F32``). The upcast is exact, so the only arithmetic the interpreter does not
exercise is the GPU's bfloat16 MMA itself (float32 accumulation, a different summation
order). float32 inputs use ``input_precision="ieee"`` (no TF32) on every device.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# GPU tile sizes (rows x vocabulary x hidden) and launch settings, chosen by
# bench/triton_sweep.py on an H100 at N=16384, H=4096, V=151936 bf16 (results in
# bench/results/triton_sweep_h100_*.json): BLOCK_V=256 took the forward from 46 to 38.5 ms. Rows are grouped (GROUP_N row blocks share the L2 copy of
# each hidden block while the vocabulary slices of the group stream the weight).
GPU_CONFIG = dict(BLOCK_N=128, BLOCK_V=256, BLOCK_H=64, GROUP_N=8, V_SPLIT=2048, num_warps=8, num_stages=3)
# The interpreter runs every program in Python: smallest tiles tl.dot accepts.
INTERPRET_CONFIG = dict(BLOCK_N=16, BLOCK_V=16, BLOCK_H=16, GROUP_N=2, V_SPLIT=64, num_warps=1, num_stages=1)


def config(dtype: torch.dtype, overrides: dict | None = None) -> dict:
    cfg = dict(INTERPRET_CONFIG if INTERPRET else GPU_CONFIG)
    if dtype == torch.float32 and not INTERPRET:
        cfg["BLOCK_H"] = 32  # float32 tiles: 3 pipeline stages of 128 x 64 x 4 B x 2 would not fit in shared memory
    cfg.update(overrides or {})
    return cfg


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


# tl.sum / tl.max / tl.cdiv / tl.zeros are themselves @triton.jit functions of triton's standard library,
# decorated when triton is first imported: if that happened before TRITON_INTERPRET=1 was set
# (torch._dynamo imports triton), the interpreter cannot call them. tl.reduce is a builtin, and
# the combine functions above are decorated with this module, so the kernels below run under
# the interpreter whenever the variable is set before this module is imported.


@triton.jit
def _grouped(pid, n_row_blocks, n_cols, GROUP_N: tl.constexpr):
    """Launch order: consecutive programs take GROUP_N row blocks x all n_cols column blocks,
    so the programs resident at once share a few hidden row blocks and weight tiles in L2."""
    per_group = GROUP_N * n_cols
    first_row_block = (pid // per_group) * GROUP_N
    group_rows = tl.minimum(n_row_blocks - first_row_block, GROUP_N)
    local = pid % per_group
    return first_row_block + local % group_rows, local // group_rows


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H, stride_h, stride_w, temperature,
                 HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """z = (h[rows] @ W[cols].T + b[cols]) / T in float32; -inf outside the vocabulary slice."""
    acc = tl.full([BLOCK_N, BLOCK_V], 0.0, dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        h = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_w + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_F32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc = tl.dot(h, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    z = acc / temperature
    return tl.where(col_ok[None, :], z, float("-inf"))


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, t_ptr, m_ptr, s_ptr, u_ptr, zt_ptr,
                N, V, H, stride_h, stride_w, temperature, n_splits,
                HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                GROUP_N: tl.constexpr, V_SPLIT: tl.constexpr):
    pid_n, pid_s = _grouped(tl.program_id(0), (N + BLOCK_N - 1) // BLOCK_N, n_splits, GROUP_N)

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    target = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    v_start = pid_s * V_SPLIT
    v_end = tl.minimum(v_start + V_SPLIT, V)

    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
    u = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
    zt = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H, stride_h, stride_w, temperature,
                         HAS_BIAS, DOT_F32, IEEE, BLOCK_N, BLOCK_V, BLOCK_H)
        zt += tl.reduce(tl.where(cols[None, :] == target[:, None], z, 0.0), 1, _add)
        m_new = tl.maximum(m, tl.reduce(z, 1, _max))  # finite: every tile has a column in the slice
        d = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
        e = tl.where(col_ok[None, :], tl.exp(d), 0.0)
        alpha = tl.exp(m - m_new)
        # rescale: u' = alpha * (u + s * (m - m_new)); s == 0 before the first tile.
        u = alpha * (u + s * tl.where(s > 0, m - m_new, 0.0)) + tl.reduce(e * d, 1, _add)
        s = alpha * s + tl.reduce(e, 1, _add)
        m = m_new
    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(u_ptr + out, u, mask=row_ok)
    tl.store(zt_ptr + out, zt, mask=row_ok)


@triton.jit
def _grad_logits_kernel(h_ptr, w_ptr, b_ptr, t_ptr, lse_ptr, scale_ptr, g_ptr,
                        N, V_TILE, H, stride_h, stride_w, stride_g, v_offset, temperature,
                        HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                        GROUP_N: tl.constexpr):
    """g[n, j] = (onehot(target_n)[v_offset + j] - exp(z[n, j] - lse[n])) * scale[n] for j < V_TILE.

    ``w_ptr`` / ``b_ptr`` already point at row ``v_offset`` of the weight / bias.
    """
    pid_n, pid_v = _grouped(tl.program_id(0), (N + BLOCK_N - 1) // BLOCK_N, (V_TILE + BLOCK_V - 1) // BLOCK_V,
                            GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V_TILE
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H, stride_h, stride_w, temperature,
                     HAS_BIAS, DOT_F32, IEEE, BLOCK_N, BLOCK_V, BLOCK_H)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    target = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    p = tl.exp(z - lse[:, None])
    onehot = tl.where((cols[None, :] + v_offset) == target[:, None], 1.0, 0.0)
    g = (onehot - p) * scale[:, None]
    tl.store(g_ptr + rows[:, None] * stride_g + cols[None, :], g.to(g_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _flags(hidden: torch.Tensor) -> tuple[bool, bool]:
    dot_f32 = INTERPRET and hidden.dtype != torch.float32
    ieee = hidden.dtype == torch.float32 or dot_f32
    return dot_f32, ieee


def _merge(m, s, u, zt):
    """Merge per-slice (m, s, u, z_target) [n_splits, N] into (logp, entropy, lse) [N]."""
    top = m.max(dim=0).values
    w = torch.exp(m - top)
    big_s = (w * s).sum(dim=0)
    big_u = (w * (u + s * (m - top))).sum(dim=0)
    lse = top + torch.log(big_s)
    logp = zt.sum(dim=0) - lse
    entropy = (torch.log(big_s) - big_u / big_s).clamp_min(0.0)
    return logp, entropy, lse


def forward(hidden, weight, bias, targets, temperature: float, overrides: dict | None = None):
    """Fused forward: (logp, entropy, lse), each [N] float32. Inputs contiguous, same dtype."""
    cfg = config(hidden.dtype, overrides)
    N, H = hidden.shape
    V = weight.shape[0]
    n_splits = triton.cdiv(V, cfg["V_SPLIT"])
    parts = torch.empty((4, n_splits, N), dtype=torch.float32, device=hidden.device)
    dot_f32, ieee = _flags(hidden)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]) * n_splits,)
    _fwd_kernel[grid](
        hidden, weight, bias if bias is not None else hidden, targets, parts[0], parts[1], parts[2], parts[3],
        N, V, H, hidden.stride(0), weight.stride(0), float(temperature), n_splits,
        HAS_BIAS=bias is not None, DOT_F32=dot_f32, IEEE=ieee,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"],
        GROUP_N=cfg["GROUP_N"], V_SPLIT=cfg["V_SPLIT"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return _merge(parts[0], parts[1], parts[2], parts[3])


def grad_logits(hidden, weight_tile, bias_tile, targets, lse, scale, v_offset: int, temperature: float,
                out: torch.Tensor, overrides: dict | None = None) -> torch.Tensor:
    """Write g = (onehot - softmax) * scale for the vocabulary rows of ``weight_tile`` into ``out``."""
    cfg = config(hidden.dtype, overrides)
    N, H = hidden.shape
    v_tile = weight_tile.shape[0]
    dot_f32, ieee = _flags(hidden)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]) * triton.cdiv(v_tile, cfg["BLOCK_V"]),)
    _grad_logits_kernel[grid](
        hidden, weight_tile, bias_tile if bias_tile is not None else hidden, targets, lse, scale, out,
        N, v_tile, H, hidden.stride(0), weight_tile.stride(0), out.stride(0), int(v_offset), float(temperature),
        HAS_BIAS=bias_tile is not None, DOT_F32=dot_f32, IEEE=ieee,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"], GROUP_N=cfg["GROUP_N"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
