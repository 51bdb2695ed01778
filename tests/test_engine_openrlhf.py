"""[CONF-PEERS] The OpenRLHF adapter (espo_ref/conformance/engines/openrlhf.py): its mapping against the real
OpenRLHF 0.11.2, and the options it declares not offered.

The mapping checks live in tests/peers/openrlhf_checks.py and run inside the OpenRLHF environment
(``bash tests/peers/setup_openrlhf.sh``: .venv-openrlhf or $ESPO_OPENRLHF_PYTHON), one process for all
of them (the engine imports once). For each option the adapter maps, the real PolicyLoss equals the
reference where OpenRLHF agrees with it, and the same option mapped wrongly does not. Without the
environment these skip, except under CI, where a missing environment is a failure. The golden runs
with the shipped expected-failure file are tests/test_engines_real.py's.
"""

from pathlib import Path

import pytest

from espo_ref.conformance import engines
from espo_ref.conformance.engines import openrlhf as engine
from espo_ref.conformance.errors import SetupError
from helpers.engine_env import run_checks

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["check_token_mean", "check_seq_mean_token_mean", "check_trainer_normalisers", "check_eps_low_high",
          "check_dual_clip", "check_gspo", "check_grpo_is_ppo", "check_bool_mask", "check_setup_errors"]


@pytest.fixture(scope="module")
def openrlhf_checks():
    return run_checks("openrlhf")


@pytest.mark.parametrize("check", CHECKS)
def test_CONF_PEERS_openrlhf_mapping_agrees_and_a_wrong_mapping_disagrees(openrlhf_checks, check):
    assert check not in openrlhf_checks["failed"], openrlhf_checks["failed"][check]
    assert check in openrlhf_checks["passed"]


@pytest.mark.parametrize("function,config,option", [
    ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum"}, "loss_agg_mode=seq-mean-token-sum"),
    ("dapo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 8}, "loss_agg_mode=seq-mean-token-sum-norm"),
    ("grpo_loss", {"log_ratio_clamp": None}, "log_ratio_clamp=None"),
    ("dapo_loss", {"log_ratio_clamp": 5.0}, "log_ratio_clamp=5.0"),
    ("gspo_loss", {"loss_agg_mode": "token-mean"}, "loss_agg_mode=token-mean"),
    ("gspo_loss", {"level": "sequence", "loss_agg_mode": "seq-mean-token-sum"}, "loss_agg_mode=seq-mean-token-sum"),
    ("gspo_loss", {"log_ratio_clamp": 5.0}, "log_ratio_clamp=5.0"),
])
def test_CONF_PEERS_openrlhf_options_it_lacks_are_declared_by_name(function, config, option):
    said = engine.OpenRLHFAdapter.unsupported(function, config, {})
    assert said is not None and said.startswith(option + " ("), said


@pytest.mark.parametrize("function,config", [
    ("grpo_loss", {}), ("grpo_loss", {"loss_agg_mode": "token-mean", "dual_clip": 3.0}), ("dapo_loss", {}),
    ("dapo_loss", {"loss_agg_mode": "seq-mean-token-mean", "log_ratio_clamp": 20.0}), ("gspo_loss", {}),
    ("gspo_loss", {"level": "sequence", "log_ratio_clamp": None}), ("gspo_loss", {"level": "token"}),
])
def test_CONF_PEERS_openrlhf_options_it_offers_are_run(function, config):
    """GSPO's token form and our default clamp are run (rows gspo-level, gspo-clamp), not declared away."""
    assert engine.OpenRLHFAdapter.unsupported(function, config, {}) is None


def test_CONF_PEERS_openrlhf_module_imports_without_the_engine_and_names_its_rows():
    assert engine.ENGINE == "openrlhf" and engine.ENVIRONMENT == ".venv-openrlhf"
    assert [row[0] for row in engine.MATRIX] == ["grpo_loss", "dapo_loss", "gspo_loss"]
    assert all(row[1] == "openrlhf.models.loss:PolicyLoss" and row[2] == "openrlhf" for row in engine.MATRIX)
    assert engines.engine_adapter("openrlhf") is engine.OpenRLHFAdapter


def test_CONF_PEERS_openrlhf_version_without_a_file_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(engines, "installed_version", lambda name: "0.0.1")
    with pytest.raises(SetupError, match=r"openrlhf 0\.0\.1 is installed, but the adapter was measured on 0\.11\.2"):
        engine.OpenRLHFAdapter(object, "grpo_loss")
    monkeypatch.setattr(engines, "installed_version", lambda name: None)
    with pytest.raises(SetupError, match="needs openrlhf installed"):
        engine.OpenRLHFAdapter(object, "grpo_loss")
