"""[CONF-ISOLATION] Implementations that try to steer the verdict, run through the real command line in
its own process: none gets exit 0, none holds the runner past its deadline, no process it starts
outlives the runner, and a report is written every time (specs/conformance.md, "Threat model").
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the guard adopts orphans through Linux's child subreaper")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FEW = ["--include", "handworked/HW-004", "--include", "handworked/HW-006", "--include", "handworked/HW-009"]


def _env(tmp_path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                ESPO_HOSTILE_PIDS=str(tmp_path / "pids"))


def espo_ref_cli(tmp_path, *args, timeout=120):
    """The command line in a process of its own; (completed process, seconds, report or None)."""
    report = tmp_path / "report.json"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "espo_ref.cli", *args, "--report", str(report)],
                          capture_output=True, text=True, env=_env(tmp_path), cwd=REPO, timeout=timeout)
    data = json.loads(report.read_text()) if report.exists() else None
    return proc, time.monotonic() - start, data


def recorded_pids(tmp_path) -> list[int]:
    path = tmp_path / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def assert_no_survivor(tmp_path, expect_some: bool = True) -> None:
    pids = recorded_pids(tmp_path)
    assert pids or not expect_some, "the implementation recorded no process: the attack did not run"
    assert not [p for p in pids if alive(p)], f"processes outlived the runner: {pids}"


def test_CONF_ISOLATION_a_stack_walker_finds_no_answer_in_the_worker(tmp_path):
    proc, _, report = espo_ref_cli(tmp_path, "conform", "--impl", "helpers.hostile_impls:stack_walker",
                                   "--function", "espo_loss", *FEW)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert report["conformant"] is False and report["verdict_protected"] is True
    assert not [c for c in report["cases"] if c["status"] == "pass"]


def test_CONF_ISOLATION_the_stack_walker_does_steer_an_unprotected_run(tmp_path):
    """The attack is real: in the comparing process (--no-isolation) it passes, and the run says so."""
    proc, _, report = espo_ref_cli(tmp_path, "conform", "--impl", "helpers.hostile_impls:stack_walker",
                                   "--function", "espo_loss", "--no-isolation", *FEW)
    assert proc.returncode == 0 and report["verdict_protected"] is False
    assert "verdict not protected" in proc.stdout


@pytest.mark.parametrize("selection", [FEW, ["--profile", "full", "--property", "50"]], ids=["golden", "property"])
def test_CONF_ISOLATION_patching_the_worker_changes_nothing_in_the_runner(tmp_path, selection):
    proc, _, report = espo_ref_cli(tmp_path, "conform", "--impl", "helpers.hostile.patches_worker:espo_loss",
                                   "--function", "espo_loss", *selection)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert report["conformant"] is False and report["counts"].get("pass", 0) == 0
    assert "returned no " in proc.stdout and "loss" in proc.stdout.split("returned no ", 1)[1].split("(")[0]


def test_CONF_ISOLATION_explain_shows_the_real_difference_of_a_module_that_patches_the_comparison(tmp_path):
    batch = tmp_path / "batch.json"
    code = subprocess.run([sys.executable, "-m", "espo_ref.cli", "conform", "--dump", "handworked/HW-004", "--to",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO).returncode
    assert code == 0
    (tmp_path / "handworked__HW-004.json").rename(batch)
    base = [sys.executable, "-m", "espo_ref.cli", "explain", str(batch), "--impl",
            "helpers.hostile.patches_worker:espo_loss", "--force"]
    protected = subprocess.run(base, capture_output=True, text=True, env=_env(tmp_path), cwd=REPO, timeout=120)
    assert protected.returncode == 1, protected.stdout[-2000:]
    assert "DIFFERS from the reference" in protected.stdout and "agrees" not in protected.stdout
    unprotected = subprocess.run(base + ["--no-isolation"], capture_output=True, text=True, env=_env(tmp_path),
                                 cwd=REPO, timeout=120)
    assert unprotected.returncode == 0 and "verdict not protected" in unprotected.stdout


@pytest.mark.parametrize("impl", ["forks_child", "detached_daemon"])
def test_CONF_ISOLATION_a_process_left_behind_is_an_error_and_is_killed(tmp_path, impl):
    proc, seconds, report = espo_ref_cli(tmp_path, "conform", "--impl", f"helpers.hostile_impls:{impl}",
                                         "--function", "espo_loss", *FEW, "--timeout", "20")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert seconds < 60
    statuses = [c["status"] for c in report["cases"]]
    assert len(statuses) >= 2 and set(statuses) == {"error"}
    assert "left 1 process(es) running" in proc.stdout
    assert_no_survivor(tmp_path)


def test_CONF_ISOLATION_a_hanging_import_is_bounded_by_timeout(tmp_path):
    proc, seconds, report = espo_ref_cli(tmp_path, "conform", "--impl", "helpers.hostile.hangs_on_import:espo_loss",
                                         "--function", "espo_loss", *FEW, "--timeout", "3")
    assert proc.returncode == 2 and seconds < 30
    assert "importing it took longer than 3 s (--timeout)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert report["conformant"] is False and "took longer" in report["error"]


@pytest.mark.parametrize("impl,extra", [("forges_reply", FEW), ("forges_answer", FEW),
                                        ("forges_reply", ["--include", "property/*", "--property", "3"])])
def test_CONF_ISOLATION_a_forged_reply_is_an_error_of_the_case_never_a_crash(tmp_path, impl, extra):
    proc, _, report = espo_ref_cli(tmp_path, "conform", "--impl", f"helpers.hostile_impls:{impl}",
                                   "--function", "espo_loss", *extra)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "broke the protocol" in proc.stdout
    assert report["conformant"] is False and report["counts"].get("pass", 0) == 0
    if "--property" in extra:
        assert any(c["case_id"].startswith("property/") and c["status"] == "error" for c in report["cases"])


def _wait_for_pids(tmp_path, n: int, proc, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while len(recorded_pids(tmp_path)) < n:
        assert proc.poll() is None, "the runner ended before the implementation started"
        assert time.monotonic() < deadline, "the implementation never started"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_CONF_ISOLATION_a_signal_to_the_runner_kills_the_worker_and_writes_the_report(tmp_path, signum):
    report = tmp_path / "report.json"
    junit = tmp_path / "junit.xml"
    proc = subprocess.Popen([sys.executable, "-m", "espo_ref.cli", "conform", "--impl",
                             "helpers.hostile_impls:hangs_for_sigterm", "--function", "espo_loss", *FEW,
                             "--timeout", "600", "--report", str(report), "--junit", str(junit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=REPO)
    _wait_for_pids(tmp_path, 2, proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum
    data = json.loads(report.read_text())
    assert data["conformant"] is False and "interrupted by" in data["error"]
    assert junit.exists() and "NOT CONFORMANT" in out
    assert_no_survivor(tmp_path)


def test_CONF_ISOLATION_an_implementation_that_signals_the_runner_gets_no_pass(tmp_path):
    proc, seconds, report = espo_ref_cli(tmp_path, "conform", "--impl", "helpers.hostile_impls:signals_the_runner",
                                         "--function", "espo_loss", *FEW, "--timeout", "600")
    assert proc.returncode == 128 + signal.SIGTERM and seconds < 60
    assert report["conformant"] is False
    assert_no_survivor(tmp_path)


def test_CONF_ISOLATION_a_runner_killed_outright_leaves_nothing_behind(tmp_path):
    """SIGKILL gives the runner no chance to clean up: the guard sees its control pipe close."""
    proc = subprocess.Popen([sys.executable, "-m", "espo_ref.cli", "conform", "--impl",
                             "helpers.hostile_impls:hangs_for_sigterm", "--function", "espo_loss", *FEW,
                             "--timeout", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(tmp_path), cwd=REPO)
    _wait_for_pids(tmp_path, 2, proc)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in recorded_pids(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_no_survivor(tmp_path)
