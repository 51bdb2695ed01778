"""[CONF-MATRIX] The conformance matrix: every engine's own loss code, run through the conformance runner.

    python -m espo_ref.conformance.matrix --write        # measure every engine, write specs/peers.md
    python -m espo_ref.conformance.matrix --check        # measure, and exit 1 when specs/peers.md differs

One row per engine, version and function: the golden cases it passes, the cases it fails
grouped by the [BASE-PEERS] row (specs/baselines.md) its expected-failure file cites, the
options its engine does not offer, and a verdict in plain words. Each engine is measured in
its own environment (``--measure ENGINE`` runs there, in a process of its own, and writes JSON);
the rows are a function of the engines' code and the spec only, so a new release shows up as
a diff of the committed file, not as folklore.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import SPEC_VERSION
from .._io import write_atomic
from .engines import ENGINES, engine_module, installed_version, matrix_rows
from .errors import SetupError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = ROOT / "specs" / "peers.md"
METHODS = {"grpo_loss": "GRPO", "dapo_loss": "DAPO", "gspo_loss": "GSPO", "gmpo_loss": "GMPO",
           "cispo_loss": "CISPO", "espo_loss": "ESPO", "grpo_advantages": "the GRPO advantage"}
ROW = re.compile(r"\[BASE-PEERS\] ([a-z0-9-]+):")


def environment_python(engine: str) -> Path:
    """[CONF-MATRIX] The interpreter of ``engine``'s environment: $ESPO_<ENGINE>_PYTHON, else its folder in the
    repository root (tests/peers/setup_<engine>.sh builds it), else this interpreter."""
    mod = engine_module(engine)
    override = os.environ.get(f"ESPO_{engine.upper()}_PYTHON")
    if override:
        return Path(override)
    if mod.ENVIRONMENT is None:
        return Path(sys.executable)
    return ROOT / mod.ENVIRONMENT / "bin" / "python"


def xfail_rows(name: str) -> dict[str, str]:
    """[CONF-MATRIX] pattern -> the [BASE-PEERS] row its line cites, for a shipped expected-failure file."""
    from .selection import read_xfail_file

    out = {}
    for pattern, reason in read_xfail_file(name).items():
        m = ROW.match(reason)
        if m is None:
            raise SetupError(f"{name}: the line of {pattern} cites no [BASE-PEERS] row: {reason!r}")
        out[pattern] = m.group(1)
    return out


def measure(engine: str, timeout: float = 120.0) -> dict:
    """[CONF-MATRIX] Run every function of ``engine``'s MATRIX in this interpreter (its environment), without the
    expected-failure file, and sort each case: passed, failing by row, unsupported, unexplained."""
    from .runner import run_conformance

    mod = engine_module(engine)
    out = []
    for function, impl, adapter, distribution in matrix_rows(engine):
        version = installed_version(distribution)
        if version is None:
            raise SetupError(f"{engine}: {distribution} is not installed in {sys.executable}")
        rows = xfail_rows(f"{engine}-{version}")
        report = run_conformance(impl, function=function, adapter=adapter, isolate=True, timeout=timeout)
        entry = {"function": function, "impl": impl, "adapter": adapter, "version": version,
                 "cases": len(report.results), "passed": 0,
                 "failing": {}, "unsupported": {}, "unexplained": [], "listed_but_passed": []}
        for r in report.results:
            row = next((row for pattern, row in rows.items() if fnmatch.fnmatchcase(r.case_id, pattern)), None)
            if r.status == "pass":
                entry["passed"] += 1
                if row is not None:
                    entry["listed_but_passed"].append(r.case_id)
            elif r.unsupported_option:
                option = re.sub(r"=(?:None|-?[0-9][0-9.e+-]*)(?= |$)", "", r.unsupported_option)  # one per option
                entry["unsupported"][option] = entry["unsupported"].get(option, 0) + 1
            elif row is not None:
                entry["failing"][row] = entry["failing"].get(row, 0) + 1
            else:
                entry["unexplained"].append(f"{r.case_id} ({r.status})")
        entry["failing"] = dict(sorted(entry["failing"].items()))
        out.append(entry)
    return {"engine": engine, "distribution": mod.DISTRIBUTION, "rows": out}


def measure_in_environment(engine: str) -> dict:
    """[CONF-MATRIX] ``measure`` run by the engine's own interpreter, in a process of its own."""
    python = environment_python(engine)
    if not python.exists():
        raise SetupError(f"{engine}: no environment at {python.parent.parent} "
                         f"(bash tests/peers/setup_{engine}.sh builds it; $ESPO_{engine.upper()}_PYTHON names another)")
    with tempfile.TemporaryDirectory(prefix="espo-ref-matrix-") as folder:
        path = Path(folder) / f"{engine}.json"
        proc = subprocess.run([str(python), "-m", "espo_ref.conformance.matrix", "--measure", engine, "--json",
                               str(path)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SetupError(f"{engine}: measuring in {python} failed (exit {proc.returncode}): {tail[0]}")
        return json.loads(path.read_text())


def peer_topics(spec: Path = ROOT / "specs" / "baselines.md") -> dict[str, str]:
    """[CONF-MATRIX] [BASE-PEERS] row id -> its topic, from the 'Where a peer differs' table of the spec."""
    try:
        text = spec.read_text(encoding="utf-8")
    except OSError:
        return {}
    topics, has_topic = {}, False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells:
            has_topic = False
        elif cells[:2] == ["row", "topic"]:
            has_topic = True
        elif has_topic and re.fullmatch(r"`[a-z0-9-]+`", cells[0]):
            topics[cells[0].strip("`")] = cells[1]
    return topics


def verdict(entry: dict, topics: dict[str, str]) -> str:
    """[CONF-MATRIX] The row's verdict in plain words: the method, except the rows it differs by."""
    method = METHODS.get(entry["function"], entry["function"])
    parts = [f"{topics.get(row, row)} (`{row}`)" for row in entry["failing"]]
    text = f"computes {method} as the spec pins it" + (f", except: {'; '.join(parts)}" if parts else "")
    if entry["unsupported"]:
        text += f"; does not offer {', '.join(o.split(' (')[0] for o in entry['unsupported'])}"
    if entry["unexplained"]:
        text += f"; {len(entry['unexplained'])} failing case(s) no [BASE-PEERS] row explains"
    if entry["listed_but_passed"]:
        text += f"; {len(entry['listed_but_passed'])} case(s) listed as failing now pass"
    return text


def render(measurements: list[dict], topics: dict[str, str] | None = None) -> str:
    """[CONF-MATRIX] specs/peers.md from the measurements (deterministic: no date, no timing)."""
    topics = peer_topics() if topics is None else topics
    lines = [
        "# The conformance matrix of the engines",
        "",
        "Generated by `python -m espo_ref.conformance.matrix --write` from real runs of each engine's own",
        "loss code through the conformance runner (specs/conformance.md [CONF-MATRIX]); do not edit it by",
        "hand. CI regenerates it and fails when it differs, so a new engine release or a spec change",
        "shows up here as a diff. Each row counts the golden cases of one function (both profiles,",
        f"spec {SPEC_VERSION}): passed; failing, grouped by the row of specs/baselines.md [BASE-PEERS]",
        "that the engine's expected-failure file cites for each; not offered by the engine (not run).",
        "",
        "| engine | version | function | engine's code | passed | failing, by [BASE-PEERS] row "
        "| not offered | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        for e in m["rows"]:
            failing = ", ".join(f"`{row}` {n}" for row, n in e["failing"].items()) or "—"
            if e["unexplained"]:
                failing += f"; unexplained {len(e['unexplained'])}"
            unsupported = ", ".join(f"{o} {n}" for o, n in e["unsupported"].items()) or "—"
            lines.append(f"| {m['engine']} | {e['version']} | `{e['function']}` | `{e['impl']}` | "
                         f"{e['passed']} of {e['cases']} | {failing} | {unsupported} | {verdict(e, topics)} |")
    lines += ["", "## The commands", "",
              "Each row is this command, in the engine's environment (tests/peers/setup_ENGINE.sh builds it);",
              "with the expected-failure file it exits 0, without it 1 wherever a row lists failures.", ""]
    for m in measurements:
        versions = ", ".join(dict.fromkeys(e["version"] for e in m["rows"]))
        lines += [f"**{m['engine']} {versions}** (`bash tests/peers/setup_{m['engine']}.sh`)"
                  if engine_module(m["engine"]).ENVIRONMENT else f"**{m['engine']} {versions}**", "", "```bash"]
        for e in m["rows"]:
            lines.append(f"espo-ref conform --impl {e['impl']} --function {e['function']} --adapter {e['adapter']} "
                         f"--xfail-file {m['engine']}-{e['version']}")
        lines.append("```")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    """[CONF-MATRIX] --write / --check the matrix (exit 0, 1 when --check differs, 2 a missing environment)."""
    parser = argparse.ArgumentParser(prog="python -m espo_ref.conformance.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--write", nargs="?", const=str(DEFAULT_PATH), default=None, metavar="PATH",
                        help="measure every engine and write the matrix (default specs/peers.md)")
    parser.add_argument("--check", nargs="?", const=str(DEFAULT_PATH), default=None, metavar="PATH",
                        help="measure every engine; exit 1 when PATH differs from the result")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset (default: all)")
    parser.add_argument("--measure", default=None, metavar="ENGINE", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.measure:
            data = measure(args.measure)
            if args.json:
                write_atomic(args.json, json.dumps(data, indent=1, sort_keys=True) + "\n")
            else:
                print(json.dumps(data, indent=1, sort_keys=True))
            return 0
        if not (args.write or args.check):
            raise SetupError("give --write [PATH] or --check [PATH]")
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        measurements = []
        for engine in engines:
            print(f"measuring {engine} ...", file=sys.stderr, flush=True)
            measurements.append(measure_in_environment(engine))
        text = render(measurements)
    except SetupError as exc:
        print(f"matrix: {exc}", file=sys.stderr)
        return 2
    if args.write:
        write_atomic(args.write, text)
        print(f"wrote {args.write}")
        return 0
    try:
        committed = Path(args.check).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"matrix: --check {args.check}: {exc.strerror}", file=sys.stderr)
        return 2
    if committed == text:
        print(f"{args.check} is what the engines give")
        return 0
    sys.stdout.writelines(difflib.unified_diff(committed.splitlines(True), text.splitlines(True),
                                               f"{args.check} (committed)", "measured now"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
