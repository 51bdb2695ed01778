"""The torch backend passes the golden vectors through every adapter (CPU, and CUDA if present)."""

import pytest

torch = pytest.importorskip("torch")

import espo_ref.torch as et  # noqa: E402
from espo_ref.cli import main as cli_main  # noqa: E402
from espo_ref.conformance.golden import load  # noqa: E402
from espo_ref.conformance.runner import run_conformance  # noqa: E402

CASES = load()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOSSES = ["espo_loss", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("function", LOSSES)
def test_torch_backend_passes_golden(function, device):
    """[ESPO-OBJ] and the baselines: values and autograd gradients of the torch mirror."""
    report = run_conformance(getattr(et, function), function=function, backend="torch", device=device, cases=CASES)
    assert report.results and not report.unexpected, [r.message for r in report.unexpected][:3]


@pytest.mark.parametrize("function", ["entropy_groups", "group_clip_eps", "group_log_ratio", "grpo_advantages",
                                      "token_entropy", "high_group_size"])
def test_torch_components_pass_golden(function):
    report = run_conformance(getattr(et, function), function=function, backend="torch", cases=CASES)
    assert report.results and not report.unexpected, [r.message for r in report.unexpected][:3]


def test_torch_loss_adapter():
    report = run_conformance(et.espo_loss, function="espo_loss", adapter="torch-loss", backend="torch", cases=CASES)
    assert report.results and not report.unexpected


def test_cli_torch(tmp_path):
    out = tmp_path / "r.json"
    assert cli_main(["conform", "--impl", "espo_ref.torch:espo_loss", "--backend", "torch",
                     "--report", str(out), "--property", "10"]) == 0
