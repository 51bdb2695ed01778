"""[CONF-PEERS] [CONF-MATRIX] The conformance runner against the engines' real loss code, each in its
own environment, and the committed conformance matrix against what those runs give.

Each engine's environment is built by ``bash tests/peers/setup_<engine>.sh`` (found in the
repository root, or at $ESPO_<ENGINE>_PYTHON); TRL lives in the project's own environment.
Without an environment these tests skip, except under CI, where a missing one is a failure.
"""

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from espo_ref.conformance.engines import ENGINES, matrix_rows
from espo_ref.conformance.golden import load
from espo_ref.conformance.matrix import environment_python, measure_in_environment, render
from espo_ref.conformance.runner import read_xfail_file, shipped_xfail_files
from helpers.engine_env import engine_python

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "specs" / "baselines.md").read_text()
PAIRS = [(engine, function, impl, adapter, distribution) for engine in ENGINES
         for function, impl, adapter, distribution in matrix_rows(engine)]


def _peer_rows() -> set[str]:
    table = SPEC[SPEC.index("**Where a peer differs"):SPEC.index("## 10. Coverage")]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M))


def test_CONF_PEERS_shipped_xfail_files_cite_peer_rows_and_real_cases():
    """Every line of every shipped file names a [BASE-PEERS] row that exists and a case that exists."""
    rows, ids = _peer_rows(), {c.case_id for c in load()}
    files = shipped_xfail_files()
    assert {name.split("-", 1)[0] for name in files} == set(ENGINES), files
    assert len(rows) >= 15
    for name, path in files.items():
        entries = read_xfail_file(path)
        assert entries, name
        for pattern, reason in entries.items():
            assert pattern in ids, f"{name}: {pattern} is not a golden case"
            m = re.match(r"\[BASE-PEERS\] ([a-z0-9-]+):", reason)
            assert m and m.group(1) in rows, f"{name}: {pattern}: {reason!r} names no [BASE-PEERS] row"


@pytest.fixture(scope="module")
def measurements():
    """Every engine measured in its environment (the runs behind specs/peers.md), by engine."""
    for engine in ENGINES:
        engine_python(engine)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(ENGINES, pool.map(measure_in_environment, ENGINES)))


def test_CONF_MATRIX_the_committed_matrix_is_what_the_engines_give(measurements):
    committed = (ROOT / "specs" / "peers.md").read_text()
    assert render([measurements[e] for e in ENGINES]) == committed, \
        "specs/peers.md differs from the runs: python -m espo_ref.conformance.matrix --write"


IDS = [f"{e}-{a}-{f}" for e, f, _, a, _ in PAIRS]


@pytest.mark.parametrize("engine,function,adapter", [(e, f, a) for e, f, _, a, _ in PAIRS], ids=IDS)
def test_CONF_MATRIX_every_failure_is_explained_and_every_listed_case_fails(measurements, engine, function, adapter):
    entry = next(r for r in measurements[engine]["rows"] if r["function"] == function and r["adapter"] == adapter)
    assert entry["unexplained"] == [], entry
    assert entry["listed_but_passed"] == [], entry
    assert entry["passed"] >= 1


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The documented command of every engine and function, with its expected-failure file; and,
    for the first function of each engine, without it."""
    folder = tmp_path_factory.mktemp("engines")
    for engine in ENGINES:
        engine_python(engine)

    def run(item):
        (engine, function, impl, adapter, distribution), with_file = item
        python = environment_python(engine)
        report = folder / f"{engine}-{function}-{with_file}.json"
        version = subprocess.run([str(python), "-c", f"from importlib.metadata import version; "
                                  f"print(version({distribution!r}))"], capture_output=True, text=True).stdout
        cmd = [str(python), "-m", "espo_ref.cli", "conform", "--impl", impl, "--function", function,
               "--adapter", adapter, "--report", str(report)]
        if with_file is True:
            cmd += ["--xfail-file", f"{engine}-{version.strip()}"]
        elif with_file == "plugin":  # the acceptance command of ESPO's verl loss, verbatim
            cmd += ["--profile", "full"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
        return (engine, function, adapter, with_file), (proc, json.loads(report.read_text()))

    firsts = {}
    for pair in PAIRS:
        firsts.setdefault(pair[0], pair)
    items = [(p, True) for p in PAIRS] + [(p, False) for p in firsts.values()]
    items.append((("verl", "espo_loss", "espo_ref.integrations.verl:compute_policy_loss_espo", "verl", "verl"),
                  "plugin"))
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, items))


@pytest.mark.parametrize("engine,function,adapter", [(e, f, a) for e, f, _, a, _ in PAIRS], ids=IDS)
def test_CONF_PEERS_each_engine_conforms_with_its_shipped_xfail_file(cli_runs, engine, function, adapter):
    proc, report = cli_runs[(engine, function, adapter, True)]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report["conformant"] and report["impl_version"]
    assert report["counts"].get("pass", 0) >= 1 and "xpass" not in report["counts"]


@pytest.mark.parametrize("engine", ENGINES)
def test_CONF_PEERS_without_the_xfail_file_it_fails_naming_the_peer_rows(cli_runs, engine):
    (proc, report), = [v for (e, _, _, w), v in cli_runs.items() if e == engine and w is False]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    failed = [c for c in report["cases"] if c["status"] in ("fail", "error")]
    assert failed
    for case in failed:
        assert "BASE-PEERS" in case["suspects"], case
        assert re.search(rf"known difference of {engine}-[0-9.]+: \[BASE-PEERS\] [a-z0-9-]+:", case["message"]), case
    assert "[BASE-PEERS]" in proc.stdout


def test_ESPO_OBJ_the_verl_plugin_loss_conforms_on_every_case(cli_runs):
    """espo_ref.integrations.verl:compute_policy_loss_espo through the verl adapter (a real
    ActorConfig with ESPOPolicyLossConfig, the old entropy as the plugin receives it), full
    profile, no xfail file."""
    proc, report = cli_runs[("verl", "espo_loss", "verl", "plugin")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report["conformant"] and report["counts"] == {"pass": len(report["cases"])}
