"""[CONF-PEERS] The SkyRL adapters (espo_ref/conformance/engines/skyrl.py): their mapping against the real
skyrl-train 0.3.1 and skyrl 0.4.0, and the options they declare not offered.

The mapping checks live in tests/peers/skyrl_checks.py and run inside the SkyRL environment
(``bash tests/peers/setup_skyrl.sh``: .venv-skyrl or $ESPO_SKYRL_PYTHON), one process for all of them
and both releases (each imports once). For each option the adapters map, the real SkyRL loss equals
the reference where SkyRL agrees with it, and the same option mapped wrongly does not; skyrl 0.4.0's
advantage scaling is checked the same way. Without the environment these skip, except under CI,
where a missing environment is a failure. The golden runs with the shipped expected-failure files are
tests/test_engines_real.py's.
"""

from pathlib import Path

import pytest

from espo_ref.conformance import engines
from espo_ref.conformance.engines import skyrl as engine
from espo_ref.conformance.errors import SetupError
from helpers.engine_env import run_checks

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["check_token_mean", "check_sequence_mean", "check_seq_mean_token_sum", "check_seq_mean_token_sum_norm",
          "check_eps_low_high", "check_dual_clip", "check_regular_has_no_dual_clip", "check_gspo", "check_cispo",
          "check_advantage_scaling", "check_rows", "check_setup_errors"]
RELEASES = ["0.3.1", "0.4.0"]


@pytest.fixture(scope="module")
def skyrl_checks():
    return run_checks("skyrl")


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("check", CHECKS)
def test_CONF_PEERS_skyrl_mapping_agrees_and_a_wrong_mapping_disagrees(skyrl_checks, check, release):
    name = f"{check}/{release}"
    assert name not in skyrl_checks["failed"], skyrl_checks["failed"][name]
    assert name in skyrl_checks["passed"]


@pytest.mark.parametrize("function,config,option", [
    ("grpo_loss", {"log_ratio_clamp": None}, "log_ratio_clamp=None"),
    ("dapo_loss", {"log_ratio_clamp": 5.0}, "log_ratio_clamp=5.0"),
    ("cispo_loss", {"log_ratio_clamp": 10.0, "eps_low": 0.2}, "log_ratio_clamp=10.0"),
    ("gspo_loss", {"log_ratio_clamp": 20.0}, "log_ratio_clamp=20.0"),
    ("gspo_loss", {"level": "sequence"}, "level=sequence"),
    ("gspo_loss", {"level": "sequence", "log_ratio_clamp": None}, "level=sequence"),
])
def test_CONF_PEERS_skyrl_options_it_lacks_are_declared_by_name(function, config, option):
    said = engine.SkyRLBackendAdapter.unsupported(function, config, {})
    assert said is not None and said.startswith(option + " ("), said
    assert engine.SkyRLTrainAdapter.unsupported(function, config, {}) == said


@pytest.mark.parametrize("function,config", [
    ("grpo_loss", {}), ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum"}),
    ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 32, "dual_clip": 3.0}),
    ("dapo_loss", {"log_ratio_clamp": 20.0}), ("gspo_loss", {"level": "token", "log_ratio_clamp": 10.0}),
    ("cispo_loss", {"eps_low": 0.2, "eps_high": 0.28, "loss_agg_mode": "seq-mean-token-mean"}),
    # invalid options are run: SkyRL's own checks (or their absence) are what is measured
    ("gspo_loss", {"level": "tokens"}), ("dapo_loss", {"dual_clip": 1}), ("cispo_loss", {"max_len": 4}),
])
def test_CONF_PEERS_skyrl_options_it_offers_are_run(function, config):
    assert engine.SkyRLBackendAdapter.unsupported(function, config, {}) is None


def test_CONF_PEERS_skyrl_module_imports_without_the_engine_and_names_its_rows():
    assert engine.ENGINE == "skyrl" and engine.DISTRIBUTION == "skyrl" and engine.ENVIRONMENT == ".venv-skyrl"
    rows = engines.matrix_rows("skyrl")
    assert [(f, a, d) for f, _, a, d in rows] == \
        [(f, "skyrl-train", "skyrl-train") for f in ("grpo_loss", "dapo_loss", "gspo_loss", "cispo_loss")] + \
        [(f, "skyrl", "skyrl") for f in ("grpo_loss", "dapo_loss", "gspo_loss", "cispo_loss")]
    assert all(impl.startswith(("skyrl_train.utils.ppo_utils:", "skyrl.backends.skyrl_train.utils.ppo_utils:"))
               for _, impl, _, _ in rows)
    assert engines.engine_adapter("skyrl") is engine.SkyRLBackendAdapter
    assert engines.engine_adapter("skyrl-train") is engine.SkyRLTrainAdapter


@pytest.mark.parametrize("adapter,distribution,measured", [(engine.SkyRLTrainAdapter, "skyrl-train", "0.3.1"),
                                                           (engine.SkyRLBackendAdapter, "skyrl", "0.4.0")])
def test_CONF_PEERS_skyrl_version_without_a_file_is_refused_by_name(monkeypatch, adapter, distribution, measured):
    monkeypatch.setattr(engines, "installed_version", lambda name: "0.0.1")
    with pytest.raises(SetupError, match=rf"{distribution} 0\.0\.1 is installed, but the adapter was measured on "
                                         r"0\.3\.1, 0\.4\.0"):
        adapter(object, "grpo_loss")
    monkeypatch.setattr(engines, "installed_version", lambda name: None)
    with pytest.raises(SetupError, match=f"needs {distribution} installed"):
        adapter(object, "grpo_loss")
    monkeypatch.setattr(engines, "installed_version", lambda name: measured)
    with pytest.raises(SetupError, match="SkyRL has no GMPO"):
        adapter(object, "gmpo_loss")
