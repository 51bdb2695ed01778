"""[CONF-PEERS] The Trinity-RFT adapter (espo_ref/conformance/engines/trinity.py): its mapping judged against
the real trinity-rft 0.6.0, and the options it declares not offered.

The checks against the engine live in tests/peers/trinity_checks.py and run inside Trinity's environment
(``bash tests/peers/setup_trinity.sh``: .venv-trinity or $ESPO_TRINITY_PYTHON): for each option the adapter
maps, a batch on which Trinity and the reference agree, and the same batch with that piece of the mapping
deliberately wrong, which must disagree. Without the environment they skip, except under CI, where a
missing environment is a failure. The rest runs here, without Trinity installed.
"""

import re
from pathlib import Path

import pytest

from espo_ref.conformance import engines
from espo_ref.conformance.engines import trinity
from espo_ref.conformance.errors import SetupError
from espo_ref.conformance.runner import read_xfail_file
from helpers.engine_env import run_checks

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["check_aggregation_modes_agree", "check_aggregation_mapped_wrong_disagrees",
          "check_sum_norm_is_n_times_ours", "check_eps_mapping", "check_cispo_cap_is_an_offset",
          "check_dual_clip_mapping", "check_bool_mask_as_the_trainer_passes_it",
          "check_trinity_checks_its_own_options", "check_no_gmpo_and_an_unmeasured_version_is_refused"]


@pytest.fixture(scope="module")
def trinity_checks():
    return run_checks("trinity")


@pytest.mark.parametrize("check", CHECKS)
def test_CONF_PEERS_trinity_mapping_against_the_real_engine(trinity_checks, check):
    assert check not in trinity_checks["failed"], trinity_checks["failed"][check]
    assert check in trinity_checks["passed"]


def test_CONF_PEERS_trinity_checks_are_all_run(trinity_checks):
    """The list above is the checks module's: a check added there is not silently left out here."""
    assert set(trinity_checks["passed"]) | set(trinity_checks["failed"]) == set(CHECKS)


@pytest.mark.parametrize("function,config,option", [
    ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 24}, "max_len=24"),
    ("cispo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 8}, "max_len=8"),
    ("gspo_loss", {"level": "sequence"}, "level=sequence"),
    ("grpo_loss", {"log_ratio_clamp": None}, "log_ratio_clamp=None"),
    ("dapo_loss", {"log_ratio_clamp": 5.0}, "log_ratio_clamp=5.0"),
    ("gspo_loss", {"log_ratio_clamp": 5.0}, "log_ratio_clamp=5.0"),
    ("cispo_loss", {"log_ratio_clamp": 3.0}, "log_ratio_clamp=3.0"),
])
def test_CONF_PEERS_trinity_options_it_lacks_are_declared_by_name(function, config, option):
    assert trinity.TrinityAdapter.unsupported(function, config, {}).startswith(option + " (")


@pytest.mark.parametrize("function,config", [
    ("grpo_loss", {}), ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm"}), ("grpo_loss", {"dual_clip": 3.0}),
    ("dapo_loss", {"loss_agg_mode": "seq-mean-token-sum"}), ("gspo_loss", {}), ("gspo_loss", {"log_ratio_clamp": None}),
    ("gspo_loss", {"level": "token"}), ("cispo_loss", {}), ("cispo_loss", {"log_ratio_clamp": None}),
    ("cispo_loss", {"eps_low": 0.2, "eps_high": 0.28}),
    # invalid options are run, so that Trinity's own checks (or their absence) are measured
    ("dapo_loss", {"dual_clip": 1}), ("gspo_loss", {"level": "tokens"}),
    ("cispo_loss", {"loss_agg_mode": "token-mean", "max_len": 4}),
])
def test_CONF_PEERS_trinity_runs_our_defaults_its_own_settings_and_invalid_options(function, config):
    """Our default clamp is run where Trinity has none (the difference is a [BASE-PEERS] row), and so is an
    invalid config (Trinity's own checks are what is measured)."""
    assert trinity.TrinityAdapter.unsupported(function, config, {}) is None


def test_CONF_PEERS_trinity_module_declares_its_matrix():
    assert (trinity.ENGINE, trinity.DISTRIBUTION, trinity.ENVIRONMENT) == ("trinity", "trinity-rft", ".venv-trinity")
    assert [row[0] for row in trinity.MATRIX] == ["grpo_loss", "dapo_loss", "gspo_loss", "cispo_loss"]
    assert all(row[1].startswith("trinity.algorithm.policy_loss_fn.") and row[2] == "trinity" for row in trinity.MATRIX)
    assert engines.engine_adapter("trinity") is trinity.TrinityAdapter


def test_CONF_PEERS_trinity_an_unmeasured_version_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(engines, "installed_version", lambda name: "0.5.9")
    with pytest.raises(SetupError, match=r"trinity-rft 0\.5\.9 is installed, but the adapter was measured on 0\.6\.0"):
        engines.known_differences("trinity", "trinity-rft")
    monkeypatch.setattr(engines, "installed_version", lambda name: None)
    with pytest.raises(SetupError, match="needs trinity-rft installed"):
        engines.known_differences("trinity", "trinity-rft")


def test_CONF_PEERS_trinity_every_row_its_file_cites_is_in_its_subsection():
    """The rows trinity-0.6.0.txt cites are each in the Trinity-RFT subsection of [BASE-PEERS]: the rows it
    adds (with a topic) and how Trinity computes the earlier ones."""
    spec = (ROOT / "specs" / "baselines.md").read_text()
    start = spec.index("#### Trinity-RFT 0.6.0")
    section = spec[start:spec.index("\n#### ", start + 1)]
    described = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M))
    cited = {re.match(r"\[BASE-PEERS\] ([a-z0-9-]+):", reason).group(1)
             for reason in read_xfail_file("trinity-0.6.0").values()}
    assert cited and cited <= described, sorted(cited - described)
    added = set(re.findall(r"^\| `([a-z0-9-]+)` \| [^|]+ \| [^|]+ \| [^|]+ \|$", section, re.M))
    assert added == {"sum-norm-responses"}
