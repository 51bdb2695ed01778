"""espo_ref.integrations.verl against the real verl 0.9.1, in its own environment.

The checks live in tests/peers/verl_plugin_checks.py and run inside the verl environment
(``bash tests/peers/setup_verl.sh``: .venv-verl or $ESPO_VERL_PYTHON), as tests/test_engines_real.py
does. Without it this skips, except under CI, where a missing environment is a failure.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERL_PYTHON = Path(os.environ.get("ESPO_VERL_PYTHON") or ROOT / ".venv-verl" / "bin" / "python")
CHECKS = ["check_equals_reference", "check_micro_batch_sum", "check_errors", "check_verl_ppo_loss_path",
          "check_train_batch_hook", "check_install", "check_readme_command", "check_bf16_entropy_claim", "check_entry_point",
          "check_v0_hook_only_for_espo"]


def run_in_verl_env(script: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run tests/peers/<script> in the verl environment: (process, its last JSON line). Skips
    without the environment, except under CI, where that is a failure."""
    if not VERL_PYTHON.exists():
        message = f"no verl 0.9.1 environment at {VERL_PYTHON}: run bash tests/peers/setup_verl.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run([str(VERL_PYTHON), str(ROOT / "tests" / "peers" / script)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(lines[-1])


@pytest.fixture(scope="module")
def verl_checks():
    return run_in_verl_env("verl_plugin_checks.py")[1]


@pytest.mark.parametrize("check", CHECKS)
def test_verl_plugin(verl_checks, check):
    assert check not in verl_checks["failed"], verl_checks["failed"][check]
    assert check in verl_checks["passed"]


def test_ESPO_OBJ_verl_worker_updates_a_tiny_model_with_the_plugin_on_cpu():
    """verl's own actor worker (ActorRolloutRefWorker -> TrainingWorker -> FSDP2 engine), one process,
    gloo, a CPU platform registered through verl's platform API: the old-log-prob pass, one update per
    trainer generation (v0 "espo_old_entropy", v1 "entropy") through the plugin, and the engine's loss
    and gradient norm against espo_ref.torch.espo_loss (tests/peers/verl_worker_check.py)."""
    proc, report = run_in_verl_env("verl_worker_check.py")
    assert proc.returncode == 0 and report["passed"], json.dumps(report["failed"])[:3000]
    for run in ("use_remove_padding=True", "use_remove_padding=False"):
        assert run in report["checks"], sorted(report["checks"])
