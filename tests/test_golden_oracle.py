"""The second derivation of the golden vectors: every generated case's expected outputs
(produced by the numpy reference) agree with the loop-based oracles written from the specs
(tests/helpers/oracle.py for ESPO, tests/helpers/baselines_oracle.py for the baselines). Hand-worked
cases come from the spec text and are checked against the reference in test_handworked.py."""

import math

import numpy as np
import pytest

from espo_ref.conformance.functions import FUNCTIONS
from espo_ref.conformance.golden import load
from espo_ref.tolerances import compare, tolerance

from helpers import baselines_oracle as base_oracle
from helpers import oracle as espo_oracle

TOL = tolerance("numpy", "float64", "value")
GENERATED = [c for c in load() if c.source.startswith("generated")]
BASELINE_ORACLES = {"grpo_loss": base_oracle.ppo_clip, "dapo_loss": base_oracle.ppo_clip,
                    "gspo_loss": base_oracle.gspo, "gmpo_loss": base_oracle.gmpo, "cispo_loss": base_oracle.cispo}


def _lists(x):
    return np.asarray(x).tolist()


def _oracle(case):
    spec = FUNCTIONS[case.function]
    cfg = spec.make_config(case.config)
    x = case.inputs
    if case.function == "espo_loss":
        out = espo_oracle.oracle_espo_loss(_lists(x["logp"]), _lists(x["old_logp"]), _lists(x["entropy"]),
                                           _lists(x["mask"]), _lists(x["advantages"]), cfg)
        scale = max(1.0, math.fsum(abs(v) for v in out["terms"]))
        return out, scale
    if case.function in BASELINE_ORACLES:
        adv = x["advantages"]
        adv = np.broadcast_to(adv[:, None], x["mask"].shape) if adv.ndim == 1 else adv
        out = BASELINE_ORACLES[case.function](_lists(x["logp"]), _lists(x["old_logp"]), _lists(x["mask"]),
                                              _lists(adv), cfg)
        out = {**out, "clipped_high": out["high"], "clipped_low": out["low"],
               "metrics": {k: out[k] for k in ("clipfrac", "clipfrac_high", "clipfrac_low", "clipfrac_dual",
                                                 "clamped_frac", "capped_frac") if k in out}}
        return out, 1.0
    if case.function == "entropy_groups":
        mask = _lists(x["mask"])
        entropy = espo_oracle.oracle_clamp_entropy(_lists(x["entropy"]), mask, cfg)
        return {"groups": espo_oracle.oracle_entropy_groups(entropy, mask, cfg)}, 1.0
    if case.function == "group_clip_eps":
        return {"eps": espo_oracle.oracle_group_clip_eps(_lists(x["entropy"]), _lists(x["groups"]), cfg)}, 1.0
    if case.function == "group_log_ratio":
        log_ratio = espo_oracle.oracle_group_log_ratio(_lists(x["logp"]), _lists(x["old_logp"]), _lists(x["groups"]))
        return {"log_ratio": log_ratio}, 1.0
    if case.function == "grpo_advantages":
        advantages = espo_oracle.oracle_grpo_advantages(_lists(x["rewards"]), _lists(x["prompt_ids"]),
                                                        _lists(x["valid"]), **case.kwargs)
        return {"advantages": advantages}, 1.0
    if case.function == "token_entropy":
        return {"entropy": espo_oracle.oracle_token_entropy(_lists(x["logits"]), case.kwargs["temperature"])}, 1.0
    if case.function == "high_group_size":
        top_fraction = case.kwargs["top_fraction"]
        return {"n_high": [espo_oracle.oracle_high_group_size(int(L), top_fraction) for L in x["lengths"]]}, 1.0
    raise AssertionError(f"no oracle for {case.function}")


def test_every_generated_function_has_an_oracle():
    assert {c.function for c in GENERATED} <= set(FUNCTIONS)
    assert len(GENERATED) >= 200


@pytest.mark.parametrize("case", GENERATED, ids=[c.case_id for c in GENERATED])
def test_golden_case_matches_oracle(case):
    """The expected outputs of a generated golden case, against the loop-based oracle."""
    got, scale = _oracle(case)
    bad = []
    for name, want in case.expected.items():
        if name not in got:
            continue
        if name == "metrics":
            keys = [k for k in want if k in got["metrics"]]
            rep = compare([got["metrics"][k] for k in keys], [want[k] for k in keys], TOL)
        elif name == "loss":
            rep = compare(got["loss"], want, type(TOL)(TOL.rtol, TOL.atol * scale, "sum of terms"))
        else:
            rep = compare(np.asarray(got[name], dtype=np.float64), np.asarray(want, dtype=np.float64), TOL)
        if not rep["ok"]:
            bad.append(f"{name}: {rep}")
    assert not bad, f"{case.case_id} (clauses {case.clauses}): golden value disagrees with the oracle: {bad}"
