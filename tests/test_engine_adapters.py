"""[CONF-PEERS] The engine adapters' mappings, judged by inputs that must fail a wrong mapping, and
[CONF-MATRIX] the matrix's rendering of measurements that must show as unexplained.

These run in the project's own environment (TRL is installed there by the [trl] extra); the
engines in environments of their own are checked by tests/test_engines_real.py.
"""

import numpy as np
import pytest

from espo_ref.conformance import engines
from espo_ref.conformance.errors import SetupError
from espo_ref.conformance.execution import load_object
from espo_ref.conformance.functions import FUNCTIONS, reference_outputs
from espo_ref.conformance.golden import GoldenCase
from espo_ref.conformance.matrix import render, verdict
from espo_ref.conformance.runner import read_xfail_file, run_conformance

trl_engine = pytest.importorskip("espo_ref.conformance.engines.trl")
pytest.importorskip("trl")


def _batch(seed: int = 0, B: int = 4, T: int = 6):
    """Ragged rows, none empty, log-ratios inside and outside every clip range, per-response advantages."""
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None, :] < rng.integers(2, T + 1, size=B)[:, None]
    old = rng.uniform(-3.0, -0.1, size=(B, T))
    logp = old + rng.normal(0.0, 0.4, size=(B, T))
    adv = np.array([1.0, -0.5, 2.0, -1.5][:B])
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


def _case(function: str, config: dict) -> GoldenCase:
    inputs = _batch()
    return GoldenCase(f"mapping/{function}", function, [], "float64", inputs, config, {},
                      reference_outputs(FUNCTIONS[function], inputs, config, {}), "test")


def _trl_outputs(function: str, config: dict) -> tuple[dict, dict]:
    adapter = trl_engine.TRLAdapter(load_object(trl_engine.COMPUTE_LOSS), function, "torch", "cpu")
    case = _case(function, config)
    return adapter.run(case), case.expected


def _agrees(got: dict, want: dict) -> bool:
    return bool(np.isclose(got["loss"], want["loss"], rtol=1e-12, atol=1e-12)
                and np.allclose(got["grad"], want["grad"], rtol=1e-12, atol=1e-12))


MODES = [("grpo_loss", {"loss_agg_mode": "token-mean"}), ("grpo_loss", {}),
         ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 9}),
         ("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum-norm"}),
         ("dapo_loss", {}), ("cispo_loss", {}), ("gspo_loss", {"level": "sequence", "log_ratio_clamp": None}),
         ("grpo_loss", {"dual_clip": 2.0, "eps_high": 0.2})]


@pytest.mark.parametrize("function,config", MODES, ids=lambda x: str(x))
def test_CONF_PEERS_trl_mapping_reproduces_the_reference_where_trl_agrees(function, config):
    """No empty row, no log-ratio beyond a clamp: here every mapped option must agree exactly."""
    got, want = _trl_outputs(function, {"log_ratio_clamp": None, **config})  # TRL has no clamp
    assert _agrees(got, want)


@pytest.mark.parametrize("wrong", [{"token-mean": "grpo", "seq-mean-token-mean": "dapo",
                                    "seq-mean-token-sum-norm": "dr_grpo"},
                                   {"token-mean": "dapo", "seq-mean-token-mean": "bnpo",
                                    "seq-mean-token-sum-norm": "grpo"}])
def test_CONF_PEERS_a_trl_aggregation_mapped_to_the_wrong_loss_type_fails(monkeypatch, wrong):
    monkeypatch.setattr(trl_engine, "LOSS_TYPES", wrong)
    outcomes = [_agrees(*_trl_outputs("grpo_loss", {"log_ratio_clamp": None, **config}))
                for config in ({"loss_agg_mode": "token-mean"}, {},
                               {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 9})]
    assert not all(outcomes)


def test_CONF_PEERS_a_trl_cispo_cap_taken_as_an_offset_fails(monkeypatch):
    real = trl_engine.trl_state

    def offset_cap(function, config, logp, T):
        state = real(function, config, logp, T)
        state.epsilon_high -= 1.0  # the cap as our offset: TRL's cap is absolute
        return state

    got, want = _trl_outputs("cispo_loss", {"log_ratio_clamp": None, "eps_high": 0.1})
    assert _agrees(got, want)
    monkeypatch.setattr(trl_engine, "trl_state", offset_cap)
    assert not _agrees(*_trl_outputs("cispo_loss", {"log_ratio_clamp": None, "eps_high": 0.1}))


def test_CONF_PEERS_options_trl_lacks_are_declared_not_run():
    lacks = trl_engine.TRLAdapter.unsupported
    assert lacks("grpo_loss", {"loss_agg_mode": "seq-mean-token-sum"}, {}).startswith("loss_agg_mode=seq-mean-token-sum")
    assert lacks("cispo_loss", {"eps_low": 0.2}, {}).startswith("eps_low < 1")
    assert lacks("grpo_loss", {}, {}) is None and lacks("grpo_loss", {"loss_agg_mode": "token-mean"}, {}) is None
    report = run_conformance(trl_engine.COMPUTE_LOSS, function="cispo_loss", adapter="trl", isolate=True,
                             xfail=read_xfail_file("trl-1.16.0"))
    declared = [r for r in report.results if r.unsupported_option]
    assert declared and all(r.status == "unsupported" for r in declared)
    assert report.conformant and report.unexpected == []


def test_CONF_PEERS_only_an_engine_adapter_declares_an_option_unsupported():
    case = _case("cispo_loss", {"eps_low": 0.2})
    assert engines.unsupported_option("trl", case)
    assert engines.unsupported_option("native", case) is None
    assert engines.unsupported_option("torch-loss", case) is None


def test_CONF_PEERS_trl_has_no_gmpo_and_says_so():
    with pytest.raises(SetupError, match="TRL has no GMPO"):
        run_conformance(trl_engine.COMPUTE_LOSS, function="gmpo_loss", adapter="trl")


@pytest.mark.parametrize("engine,distribution", [("verl", "verl"), ("trl", "trl")])
def test_CONF_PEERS_an_engine_version_without_a_file_is_refused_by_name(monkeypatch, engine, distribution):
    monkeypatch.setattr(engines, "installed_version", lambda name: "0.0.1")
    with pytest.raises(SetupError, match=rf"{distribution} 0\.0\.1 is installed, but the adapter was measured on"):
        engines.known_differences(engine, distribution)
    monkeypatch.setattr(engines, "installed_version", lambda name: None)
    with pytest.raises(SetupError, match="needs"):
        engines.known_differences(engine, distribution)


def _measurement(**entry):
    row = {"function": "grpo_loss", "impl": "x:y", "adapter": "trl", "version": "9.9", "cases": 10, "passed": 7,
           "failing": {}, "unsupported": {}, "unexplained": [], "listed_but_passed": []} | entry
    return {"engine": "trl", "distribution": "trl", "rows": [row]}


def test_CONF_MATRIX_unexplained_failures_and_stale_lines_show_in_the_matrix():
    topics = {"agg-empty": "empty responses"}
    clean = render([_measurement(failing={"agg-empty": 3})], topics)
    assert "computes GRPO as the spec pins it, except: empty responses (`agg-empty`)" in clean
    assert "unexplained" not in clean
    dirty = render([_measurement(failing={"agg-empty": 2}, unexplained=["c (fail)"], listed_but_passed=["d"])], topics)
    assert "unexplained 1" in dirty and "no [BASE-PEERS] row explains" in dirty and "now pass" in dirty
    assert verdict(_measurement()["rows"][0], topics) == "computes GRPO as the spec pins it"
    assert "--xfail-file trl-9.9" in clean
