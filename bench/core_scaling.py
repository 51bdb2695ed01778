"""Time and peak memory of the numpy espo_loss (value + gradient) from 1k to 16M tokens.

The floor is a plain token-level PPO-clip surrogate (value + analytic gradient, token
mean) computed in the same run on the same inputs. Peak memory is measured by
tracemalloc in a separate pass (numpy reports its allocations to it).

    python bench/core_scaling.py [--max-tokens N] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median_time, write_results  # noqa: E402

import espo_ref  # noqa: E402

SHAPES = [(8, 128), (32, 512), (128, 2048), (256, 4096), (512, 8192), (1024, 16384)]


def ppo_clip_floor(logp, old_logp, mask, adv, eps=0.2):
    """Token-level PPO-clip: value and gradient, token-mean aggregation."""
    ratio = np.exp(np.where(mask, logp - old_logp, 0.0))
    a = adv[:, None]
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a)
    n = mask.sum()
    unclipped = ~(((a > 0) & (ratio > 1 + eps)) | ((a < 0) & (ratio < 1 - eps)))
    grad = np.where(mask & unclipped, -a * ratio / n, 0.0)
    return -float(np.sum(np.where(mask, surrogate, 0.0)) / n), grad


def make_inputs(B, T, seed=0):
    rng = np.random.default_rng(seed)
    V = 151_936
    lengths = rng.integers(T // 2, T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    old_logp = -rng.exponential(1.0, size=(B, T))
    logp = old_logp + rng.normal(0.0, 0.05, size=(B, T))
    entropy = rng.uniform(0.0, np.log(V), size=(B, T))
    adv = rng.normal(size=B)
    return logp, old_logp, entropy, mask, adv, espo_ref.ESPOConfig(vocab_size=V)


def format_row(r: dict) -> str:
    shape = f"{r['B']} x {r['T']}"
    return (f"{shape:>13} {r['tokens']:>10} {r['espo_s']:>9.4f} {r['ppo_clip_s']:>9.4f} "
            f"{r['time_ratio']:>7.2f} {r['espo_peak_bytes'] / 2**20:>9.1f} "
            f"{r['ppo_clip_peak_bytes'] / 2**20:>9.1f} {r['memory_ratio']:>6.2f}")


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=1024 * 16384)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    header = f"{'B x T':>13} {'tokens':>10} {'espo s':>9} {'ppo s':>9} {'time x':>7} {'espo MiB':>9} {'ppo MiB':>9} {'mem x':>6}"
    print(header)
    for B, T in SHAPES:
        if B * T > args.max_tokens:
            continue
        logp, old, ent, mask, adv, cfg = make_inputs(B, T)
        repeats = args.repeats if B * T <= 4_000_000 else 3
        espo = lambda: espo_ref.espo_loss(logp, old, ent, mask, adv, cfg)  # noqa: E731
        ppo = lambda: ppo_clip_floor(logp, old, mask, adv)  # noqa: E731
        t_espo, t_ppo = median_time(espo, repeats), median_time(ppo, repeats)
        m_espo, m_ppo = peak_bytes(espo), peak_bytes(ppo)
        row = {"B": B, "T": T, "tokens": B * T, "espo_s": t_espo, "ppo_clip_s": t_ppo,
               "time_ratio": t_espo / t_ppo, "espo_peak_bytes": m_espo,
               "ppo_clip_peak_bytes": m_ppo, "memory_ratio": m_espo / m_ppo, "repeats": repeats}
        rows.append(row)
        print(format_row(row), flush=True)
    table = "\n".join([header] + [format_row(r) for r in rows])
    payload = {"benchmark": "core_scaling", "espo_ref": espo_ref.__version__,
               "spec_version": espo_ref.SPEC_VERSION, "machine": machine_info(),
               "what": "numpy espo_loss (value + grad, default config) vs token-level PPO-clip floor; "
                       "median wall time; tracemalloc peak",
               "rows": rows}
    write_results("core_scaling", payload, table)


if __name__ == "__main__":
    main()
