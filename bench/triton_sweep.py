"""Tile-size sweep of the fused Triton log-prob/entropy kernels on one GPU.

Times forward (no grad) and forward + backward of ``token_logprobs_and_entropy(impl="triton")``
at the issue's shape for a list of launch configurations, checks each against the default
configuration's outputs, and prints a table (written to $OUT/triton_sweep.json when set).

    python bench/triton_sweep.py [--budget-s 150]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from espo_ref.torch import _triton_logprob as tri  # noqa: E402
from espo_ref.torch.logprob_entropy import token_logprobs_and_entropy  # noqa: E402

CANDIDATES = [
    {},
    {"BLOCK_N": 256},
    {"num_warps": 16},
    {"BLOCK_H": 32, "num_stages": 4},
    {"GROUP_N": 4},
    {"BLOCK_V": 128},
]


def cuda_time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--h", type=int, default=4096)
    parser.add_argument("--v", type=int, default=151936)
    parser.add_argument("--budget-s", type=float, default=150.0)
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = (torch.randn(args.n, args.h, device="cuda", generator=gen) * 0.5).to(torch.bfloat16)
    weight = (torch.randn(args.v, args.h, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
    targets = torch.randint(0, args.v, (args.n,), device="cuda", generator=gen)
    mm_ms = cuda_time(lambda: torch.mm(hidden, weight.t()), 5)
    with torch.no_grad():
        ref_logp, ref_ent = token_logprobs_and_entropy(hidden, weight, targets, impl="triton")
    rows, start = [], time.time()
    print(f"matmul {mm_ms:.2f} ms; base config {tri.GPU_CONFIG}", flush=True)
    for overrides in CANDIDATES:
        if time.time() - start > args.budget_s:
            rows.append({"overrides": overrides, "skipped": "time budget"})
            continue
        row = {"overrides": overrides}
        try:
            def fwd():
                with torch.no_grad():
                    return token_logprobs_and_entropy(hidden, weight, targets, impl="triton", _triton_config=overrides)

            logp, ent = fwd()
            row["max_abs_logp"] = float((logp - ref_logp).abs().max())
            row["max_abs_entropy"] = float((ent - ref_ent).abs().max())
            row["fwd_ms"] = cuda_time(fwd, 5)
            h = hidden.detach().requires_grad_(True)
            w = weight.detach().requires_grad_(True)

            def fwd_bwd():
                h.grad = w.grad = None
                lp, _ = token_logprobs_and_entropy(h, w, targets, impl="triton", _triton_config=overrides)
                lp.sum().backward()

            row["fwd_bwd_ms"] = cuda_time(fwd_bwd, 3)
            row["fwd_x_mm"] = row["fwd_ms"] / mm_ms
        except Exception as exc:  # noqa: BLE001 - a config that does not compile or fit is reported
            row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    payload = {"machine": machine_info(), "shape": vars(args), "matmul_ms": mm_ms, "base": tri.GPU_CONFIG, "rows": rows}
    out = os.environ.get("OUT")
    if out:
        Path(out, "triton_sweep.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{'overrides':<60} {'fwd ms':>8} {'x mm':>6} {'f+b ms':>8} {'|dlogp|':>9}")
    for r in rows:
        if "fwd_ms" in r:
            print(f"{json.dumps(r['overrides']):<60} {r['fwd_ms']:>8.2f} {r['fwd_x_mm']:>6.2f} "
                  f"{r['fwd_bwd_ms']:>8.2f} {r['max_abs_logp']:>9.2e}")
        else:
            print(f"{json.dumps(r['overrides']):<60} {r.get('error') or r.get('skipped')}")


if __name__ == "__main__":
    main()
