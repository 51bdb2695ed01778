"""Helpers shared by the benchmarks: machine facts, timing statistics, atomic result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from espo_ref._io import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import numpy

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    info.setdefault("device", "cpu")
    return info


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(name: str, payload: dict, table: str) -> None:
    """bench/results/NAME.json (machine, versions, rows) and NAME.md (the printed table)."""
    write_atomic(RESULTS / f"{name}.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    head = "\n".join(f"- {k}: {v}" for k, v in payload["machine"].items())
    write_atomic(RESULTS / f"{name}.md", f"# {name}\n\n{head}\n\n```\n{table}\n```\n")
