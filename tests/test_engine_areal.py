"""[CONF-PEERS] The ``--adapter areal`` mapping against the real AReaL 1.0.4, in its own environment.

The checks that call AReaL live in tests/peers/areal_checks.py and run inside the AReaL environment
(``bash tests/peers/setup_areal.sh``: .venv-areal or $ESPO_AREAL_PYTHON), as tests/test_engines_real.py
runs the engines. Without it those skip, except under CI, where a missing environment is a failure.
The adapter's declarations (options AReaL lacks, versions without a file) are checked here without AReaL.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from espo_ref.conformance import engines
from espo_ref.conformance.engines import areal as areal_engine
from espo_ref.conformance.errors import SetupError
from helpers.engine_env import run_checks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def areal_checks():
    """tests/peers/areal_checks.py run by AReaL's interpreter: {"passed", "failed", "measured"}."""
    return run_checks("areal")


def _passed(checks: dict, name: str) -> None:
    assert name not in checks["failed"], checks["failed"][name]
    assert name in checks["passed"], sorted(checks["passed"])


def test_CONF_PEERS_areal_each_mapped_option_reproduces_the_reference_where_areal_agrees(areal_checks):
    """token-mean GRPO with eps_low != eps_high, DAPO's defaults, the dual clip, GSPO at both levels
    (per-response advantages; per-token of one sign per response): loss and gradient within 1e-12,
    on batches where each option changes the answer."""
    _passed(areal_checks, "check_each_mapped_option_agrees")
    _passed(areal_checks, "check_the_batches_discriminate")


@pytest.mark.parametrize("check", ["check_swapped_eps_disagrees", "check_dropped_dual_clip_disagrees",
                                   "check_wrong_importance_sampling_level_disagrees"])
def test_CONF_PEERS_areal_a_wrong_mapping_disagrees(areal_checks, check):
    """eps_low / eps_high swapped or eps_high dropped, the dual clip dropped, GRPO sent to AReaL's sequence
    level, GSPO to its token level: the same batches then fail."""
    _passed(areal_checks, check)


def test_CONF_PEERS_areal_seq_mean_modes_run_through_areal_disagree_and_are_declared(areal_checks):
    """AReaL's loss is a token mean: a seq-mean-* mode mapped onto it disagrees, so the adapter declares it."""
    _passed(areal_checks, "check_seq_mean_modes_are_not_offered")


def test_CONF_PEERS_areal_takes_the_mask_as_bool(areal_checks):
    _passed(areal_checks, "check_the_mask_goes_in_as_bool")


def test_CONF_PEERS_areal_refuses_an_unknown_gspo_level_itself(areal_checks):
    _passed(areal_checks, "check_unknown_level_is_refused_by_areal")


@pytest.mark.parametrize("check", ["check_row_padding_nonfinite", "check_row_gspo_mean_advantage",
                                   "check_row_token_clamp_and_dual_clip_boundary"])
def test_CONF_PEERS_areal_rows_measured_as_the_spec_says(areal_checks, check):
    """specs/baselines.md [BASE-PEERS] "AReaL 1.0.4": padding-nonfinite, gspo-mean-advantage, and the
    earlier rows token-clamp and dual-clip-boundary, on small batches."""
    _passed(areal_checks, check)


def test_CONF_PEERS_areal_options_it_lacks_are_declared_not_run():
    lacks = areal_engine.ArealAdapter.unsupported
    for function in areal_engine.AREAL_FUNCTIONS:
        assert lacks(function, {"loss_agg_mode": "token-mean"}, {}) is None
        for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
            assert lacks(function, {"loss_agg_mode": mode}, {}).startswith(f"loss_agg_mode={mode} (")
    assert lacks("grpo_loss", {}, {}).startswith("loss_agg_mode=seq-mean-token-mean")  # GRPO's default
    assert lacks("gspo_loss", {"level": "sequence"}, {}).startswith("loss_agg_mode=seq-mean-token-mean")
    assert lacks("dapo_loss", {}, {}) is None and lacks("dapo_loss", {"dual_clip": 3.0}, {}) is None


def test_CONF_PEERS_areal_module_imports_without_areal_and_maps_every_matrix_row():
    code = ("import sys; import espo_ref.conformance.engines.areal as m; "
            "assert not any(k == 'areal' or k.startswith('areal.') for k in sys.modules); print(len(m.MATRIX))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]
    assert [row[0] for row in areal_engine.MATRIX] == ["grpo_loss", "dapo_loss", "gspo_loss"]
    assert {row[1] for row in areal_engine.MATRIX} == {areal_engine.PPO_ACTOR_LOSS}
    assert areal_engine.areal_options("grpo_loss", {"eps_low": 0.1, "eps_high": 0.3}) == {
        "eps_clip": 0.1, "eps_clip_higher": 0.3, "c_clip": None, "importance_sampling_level": "token"}
    assert areal_engine.areal_options("gspo_loss", {"level": "token"}) == {
        "eps_clip": 3e-4, "eps_clip_higher": 4e-4, "importance_sampling_level": "sequence"}


def test_CONF_PEERS_areal_another_version_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(engines, "installed_version", lambda name: "1.0.5")
    with pytest.raises(SetupError, match=r"areal 1\.0\.5 is installed, but the adapter was measured on 1\.0\.4"):
        engines.known_differences("areal", "areal")
    monkeypatch.setattr(engines, "installed_version", lambda name: None)
    with pytest.raises(SetupError, match="needs areal installed"):
        engines.known_differences("areal", "areal")


def test_CONF_PEERS_areal_lacks_gmpo_and_cispo_and_says_so(monkeypatch):
    monkeypatch.setattr(engines, "installed_version", lambda name: "1.0.4")
    for function, name in (("gmpo_loss", "GMPO"), ("cispo_loss", "CISPO")):
        with pytest.raises(SetupError, match=f"AReaL has no {name}"):
            areal_engine.ArealAdapter(lambda *a, **k: None, function, "torch", "cpu")
