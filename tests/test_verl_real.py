"""[CONF-PEERS] The conformance runner against the real verl 0.9.1 (not a look-alike), in its own environment.

verl 0.9.1 pins transformers < 5.11, so it lives in a separate virtual environment built by
``bash tests/peers/setup_verl.sh`` (found at .venv-verl or $ESPO_VERL_PYTHON). Without it
these tests skip, except under CI, where a missing environment is a failure.
"""

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from espo_ref.conformance.golden import load
from espo_ref.conformance.runner import read_xfail_file, shipped_xfail_files

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "specs" / "baselines.md").read_text()
VERL_PYTHON = Path(os.environ.get("ESPO_VERL_PYTHON") or ROOT / ".venv-verl" / "bin" / "python")
CORE = "verl.trainer.ppo.core_algos"
# (verl function, our function, adapter): the commands the README documents
COMMANDS = [
    ("compute_policy_loss_vanilla", "grpo_loss", "verl"),
    ("compute_policy_loss_vanilla", "dapo_loss", "verl"),
    ("compute_policy_loss_gspo", "gspo_loss", "verl"),
    ("compute_policy_loss_geo_mean", "gmpo_loss", "verl"),
    ("compute_policy_loss_cispo", "cispo_loss", "verl"),
    ("compute_grpo_outcome_advantage", "grpo_advantages", "verl-advantage"),
]


def _peer_rows() -> set[str]:
    table = SPEC[SPEC.index("**Where a peer differs"):SPEC.index("## 10. Coverage")]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M))


def test_CONF_PEERS_shipped_xfail_file_cites_peer_rows_and_real_cases():
    """Every line of the shipped verl file names a [BASE-PEERS] row that exists and a case that exists."""
    rows, ids = _peer_rows(), {c.case_id for c in load()}
    entries = read_xfail_file(shipped_xfail_files()["verl-0.9.1"])
    assert len(rows) >= 15 and entries
    for pattern, reason in entries.items():
        assert pattern in ids, f"{pattern} is not a golden case"
        m = re.match(r"\[BASE-PEERS\] ([a-z0-9-]+):", reason)
        assert m and m.group(1) in rows, f"{pattern}: {reason!r} names no [BASE-PEERS] row"


@pytest.fixture(scope="module")
def verl_runs(tmp_path_factory):
    if not VERL_PYTHON.exists():
        message = f"no verl 0.9.1 environment at {VERL_PYTHON}: run bash tests/peers/setup_verl.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("verl")

    def run(item):
        (fn, function, adapter), xfail = item
        report = folder / f"{function}-{xfail}.json"
        impl = fn if ":" in fn else f"{CORE}:{fn}"
        cmd = [str(VERL_PYTHON), "-m", "espo_ref.cli", "conform", "--impl", impl, "--function", function,
               "--adapter", adapter, "--report", str(report)] + (["--xfail-file", "verl-0.9.1"] if xfail is True else [])
        if xfail == "plugin":  # the acceptance command, verbatim
            cmd += ["--profile", "full"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
        return (function, xfail), (proc, json.loads(report.read_text()))

    items = [(c, x) for c in COMMANDS for x in (True, False)]
    items.append((("espo_ref.integrations.verl:compute_policy_loss_espo", "espo_loss", "verl"), "plugin"))
    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, items))


@pytest.mark.parametrize("function", [c[1] for c in COMMANDS])
def test_CONF_PEERS_verl_conforms_with_the_shipped_xfail_file(verl_runs, function):
    proc, report = verl_runs[(function, True)]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report["conformant"] and report["impl_version"] == "0.9.1"
    assert report["counts"].get("pass", 0) >= 4 and "xpass" not in report["counts"]


def test_ESPO_OBJ_the_verl_plugin_loss_conforms_on_every_case(verl_runs):
    """espo_ref.integrations.verl:compute_policy_loss_espo through the verl adapter (a real
    ActorConfig with ESPOPolicyLossConfig, the old entropy as the plugin receives it), full
    profile, no xfail file."""
    proc, report = verl_runs[("espo_loss", "plugin")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report["conformant"] and report["counts"] == {"pass": len(report["cases"])}


@pytest.mark.parametrize("function", [c[1] for c in COMMANDS])
def test_CONF_PEERS_verl_without_the_xfail_file_fails_naming_the_peer_rows(verl_runs, function):
    proc, report = verl_runs[(function, False)]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    failed = [c for c in report["cases"] if c["status"] in ("fail", "error")]
    assert failed
    for case in failed:
        assert "BASE-PEERS" in case["suspects"], case
        assert re.search(r"known difference of verl-0\.9\.1: \[BASE-PEERS\] [a-z0-9-]+:", case["message"]), case
    assert "[BASE-PEERS]" in proc.stdout
