"""The fuzz properties of tests/test_fuzz.py (issue 12) for many more examples, counted.

Every public loss and component (tests/helpers/fuzz_properties.py: FUNCTIONS) gets random extreme
but finite inputs, float64 and float32, through the numpy core and the torch backend. A
property violation is recorded, not raised, so that the run completes; the counts say how
many cases ran, how each backend ended (fine, or an ESPOInputError by message kind), how
many outputs were non-finite without an error (must be 0), how many comparisons were
made or rejected as ill-conditioned (and why), and every violation (must be none).

    python bench/fuzz.py [--examples N] [--functions espo_loss,...] [--seed S]

Writes bench/results/fuzz.json (atomically, with the machine and versions) and fuzz.md,
and prints the table. Exit status 1 if any violation or non-finite output was found.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import UnsatisfiedAssumption  # noqa: E402

from _common import machine_info, write_results  # noqa: E402
from helpers.fuzz_properties import CHECKS, FUNCTIONS, Record, cases  # noqa: E402

import espo_ref  # noqa: E402


def run_function(function: str, examples: int, rng_seed: int) -> tuple[list[Record], float]:
    """Draw ``examples`` compared cases of ``function`` (rejected draws come on top, up to
    hypothesis' limit); return every case's Record and the seconds taken."""
    records: list[Record] = []

    @seed(rng_seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def body(data):
        case = data.draw(cases(function))
        record = Record(function, case["dtype"])
        records.append(record)
        try:
            CHECKS[function](case, record)
        except UnsatisfiedAssumption:
            raise
        except Exception as err:  # noqa: BLE001  a violation: recorded, the run goes on
            record.failure = f"{type(err).__name__}: {err}"[:600] + f" | case: {case!r}"[:3000]

    start = time.perf_counter()
    body()
    return records, time.perf_counter() - start


def summarise(function: str, records: list[Record], seconds: float) -> dict:
    outcomes = {backend: collections.Counter(r.outcome.get(backend, "not run") for r in records)
                for backend in ("numpy", "torch")}
    return {
        "function": function,
        "cases": len(records),
        "float32_cases": sum(r.dtype == "float32" for r in records),
        "seconds": round(seconds, 1),
        "numpy_ok": outcomes["numpy"].get("ok", 0),
        "torch_ok": outcomes["torch"].get("ok", 0),
        "errors": {backend: dict(sorted((k[len("error: "):], v) for k, v in c.items() if k.startswith("error: ")))
                   for backend, c in outcomes.items()},
        "nonfinite_outputs": sum(len(r.nonfinite) for r in records),
        "compared": sum(r.compared for r in records),
        "rejected": dict(collections.Counter(r.rejected for r in records if r.rejected)),
        "violations": [r.failure for r in records if r.failure],
    }


def table(rows: list[dict]) -> str:
    head = f"{'function':<16} {'cases':>6} {'f32':>5} {'np ok':>6} {'np err':>6} {'t ok':>6} {'t err':>6} " \
           f"{'compared':>8} {'rejected':>8} {'nonfinite':>9} {'violations':>10} {'s':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['function']:<16} {r['cases']:>6} {r['float32_cases']:>5} {r['numpy_ok']:>6} "
            f"{sum(r['errors']['numpy'].values()):>6} {r['torch_ok']:>6} {sum(r['errors']['torch'].values()):>6} "
            f"{r['compared']:>8} {sum(r['rejected'].values()):>8} {r['nonfinite_outputs']:>9} "
            f"{len(r['violations']):>10} {r['seconds']:>6}")
    errors = collections.Counter()
    for r in rows:
        for backend, kinds in r["errors"].items():
            for kind, n in kinds.items():
                errors[(backend, kind)] += n
    lines += ["", "errors by backend and message kind (ESPOInputError):"]
    lines += [f"  {n:>6}  {backend:<5}  {kind}" for (backend, kind), n in sorted(errors.items(), key=lambda x: -x[1])]
    rejected = collections.Counter()
    for r in rows:
        rejected.update(r["rejected"])
    lines += ["", "comparisons rejected as ill-conditioned (assume), by reason:"]
    lines += [f"  {n:>6}  {reason}" for reason, n in rejected.most_common()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="compared examples per function")
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    import hypothesis
    import torch

    rows = []
    for i, function in enumerate(args.functions.split(",")):
        records, seconds = run_function(function, args.examples, args.seed + i)
        rows.append(summarise(function, records, seconds))
        print(f"{function}: {rows[-1]['cases']} cases in {seconds:.0f} s", flush=True)
    totals = {
        "cases": sum(r["cases"] for r in rows),
        "compared": sum(r["compared"] for r in rows),
        "rejected": sum(sum(r["rejected"].values()) for r in rows),
        "numpy_errors": sum(sum(r["errors"]["numpy"].values()) for r in rows),
        "torch_errors": sum(sum(r["errors"]["torch"].values()) for r in rows),
        "nonfinite_outputs": sum(r["nonfinite_outputs"] for r in rows),
        "violations": sum(len(r["violations"]) for r in rows),
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }
    machine = machine_info()
    machine.update({"espo_ref": espo_ref.__version__, "spec_version": espo_ref.SPEC_VERSION,
                    "hypothesis": hypothesis.__version__, "torch_threads": torch.get_num_threads()})
    payload = {"machine": machine, "examples_per_function": args.examples, "seed": args.seed,
               "totals": totals, "functions": rows}
    text = table(rows) + f"\n\ntotals: {totals}"
    write_results("fuzz", payload, text)
    print(text)
    return 1 if totals["violations"] or totals["nonfinite_outputs"] else 0


if __name__ == "__main__":
    sys.exit(main())
