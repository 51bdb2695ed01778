"""Running code inside an engine's own environment (tests/peers/setup_<engine>.sh builds it)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from espo_ref.conformance.matrix import environment_python

ROOT = Path(__file__).resolve().parents[2]


def engine_python(engine: str) -> Path:
    """The interpreter of ``engine``'s environment; skip without it, except under CI (a failure)."""
    python = environment_python(engine)
    if not python.exists():
        message = f"no {engine} environment at {python}: run bash tests/peers/setup_{engine}.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def run_checks(engine: str) -> dict:
    """tests/peers/<engine>_checks.py run by the engine's interpreter; its last JSON line
    ({"passed", "failed", ...})."""
    proc = subprocess.run([str(engine_python(engine)), str(ROOT / "tests" / "peers" / f"{engine}_checks.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})  # deepspeed (OpenRLHF): said, not detected
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])
