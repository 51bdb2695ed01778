"""The file-reader fuzz of tests/test_files.py (issue 20, [CONF-FILES]) for many more files, counted.

Every kind of file the command line reads (tests/helpers/hostile_files.py: READERS — explain's
.npz and .json batches, a run's latest.json, state.json, config.json and metrics.jsonl, a task's
JSONL, torch tensor files) gets hostile files: random bytes, the valid file mutated byte by byte,
a value swapped for a random JSON value, nesting at and past the limit (200,000 deep), a million
containers, .npy headers declaring huge or negative shapes and object or structured dtypes, zip
members lying about their size or deflating to 320 MB, compressed or overlapping tensor
members, raw pickles. Each file is read as the command line reads it; the outcome is "loaded",
"refused" (one line naming the file: counted by kind of reason) or a violation (any other
exception, a message on two lines or not naming the file: recorded, the run goes on). The peak
of Python's traced memory is taken for every file (the bounds are checked before allocating).

    python bench/fuzz_files.py [--files N] [--kinds batch.npz,...] [--seed S]

Writes bench/results/fuzz_files.json (atomically, with the machine and versions) and
fuzz_files.md, and prints the table. Exit status 1 if any violation was found.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _common import machine_info, write_results  # noqa: E402
from helpers.hostile_files import READERS, files, outcome, valid, write  # noqa: E402

import espo_ref  # noqa: E402


def run_kind(kind: str, count: int, rng_seed: int, folder: Path) -> dict:
    """``count`` hostile files of ``kind``, each read once; the outcomes counted."""
    outcomes: collections.Counter = collections.Counter()
    violations: list[str] = []
    peaks, sizes = [], []

    @seed(rng_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def body(data):
        blob = data.draw(files(kind))
        path = write(folder / kind, kind, blob)
        sizes.append(len(blob))
        tracemalloc.reset_peak()
        try:
            outcomes[outcome(kind, path)] += 1
        except AssertionError as err:  # a violation: recorded, the run goes on
            violations.append(f"{err}"[:600] + f" | file starts {blob[:200]!r}")
        peaks.append(tracemalloc.get_traced_memory()[1])

    outcome(kind, write(folder / kind, kind, valid(kind)))  # imports and caches outside the measurement
    tracemalloc.start()
    start = time.perf_counter()
    try:
        body()
    finally:
        seconds = time.perf_counter() - start
        tracemalloc.stop()
    refused = {k[len("refused: "):]: v for k, v in outcomes.items() if k.startswith("refused: ")}
    return {
        "kind": kind,
        "files": len(sizes),
        "loaded": outcomes.get("loaded", 0),
        "refused": sum(refused.values()),
        "violations": violations,
        "reasons": dict(sorted(refused.items(), key=lambda kv: -kv[1])),
        "largest_file_bytes": max(sizes, default=0),
        "peak_traced_mib": round(max(peaks, default=0) / 2**20, 1),
        "seconds": round(seconds, 1),
    }


def table(rows: list[dict]) -> str:
    head = (f"{'reader':<14} {'files':>6} {'loaded':>7} {'refused':>8} {'reasons':>8} {'violations':>10} "
            f"{'largest file':>13} {'peak MiB':>9} {'s':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kind']:<14} {r['files']:>6} {r['loaded']:>7} {r['refused']:>8} {len(r['reasons']):>8} "
                     f"{len(r['violations']):>10} {r['largest_file_bytes']:>13,} {r['peak_traced_mib']:>9} "
                     f"{r['seconds']:>6}")
    for r in rows:
        lines += ["", f"{r['kind']}: the most frequent reasons of {len(r['reasons'])} "
                      f"(FILE the file, N a number, (...) and '...' elided)"]
        lines += [f"  {n:>6}  {reason}" for reason, n in list(r["reasons"].items())[:8]]
        lines += [f"  VIOLATION {v}" for v in r["violations"][:5]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="hostile files per reader")
    parser.add_argument("--kinds", default=",".join(READERS))
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    import hypothesis
    import numpy
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="espo-ref-fuzz-files-") as tmp:
        for i, kind in enumerate(args.kinds.split(",")):
            rows.append(run_kind(kind, args.files, args.seed + i, Path(tmp)))
            print(f"{kind}: {rows[-1]['files']} files in {rows[-1]['seconds']:.0f} s", flush=True)
    totals = {
        "files": sum(r["files"] for r in rows),
        "loaded": sum(r["loaded"] for r in rows),
        "refused": sum(r["refused"] for r in rows),
        "violations": sum(len(r["violations"]) for r in rows),
        "peak_traced_mib": max(r["peak_traced_mib"] for r in rows),
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }
    machine = machine_info()
    machine.update({"espo_ref": espo_ref.__version__, "spec_version": espo_ref.SPEC_VERSION,
                    "hypothesis": hypothesis.__version__, "numpy": numpy.__version__,
                    "torch_threads": torch.get_num_threads()})
    payload = {"machine": machine, "files_per_reader": args.files, "seed": args.seed, "totals": totals,
               "readers": rows}
    text = table(rows) + f"\n\ntotals: {totals}"
    write_results("fuzz_files", payload, text)
    print(text)
    return 1 if totals["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
