"""Fuzz suite (issue 12): random extreme but finite inputs for every public loss and component,
numpy core against the torch backend (tests/helpers/fuzz_properties.py has the strategies and the
properties; bench/fuzz.py runs the same properties for many more examples).

Properties, each failure naming its clause: no exception other than ESPOInputError
[ESPO-INPUT]; no non-finite output without an error [ESPO-INPUT]; numpy and torch take the
same decisions (error or not, with the same message; groups, clip and clamp masks) and give
values within espo_ref/tolerances.py; torch autograd, with old_logp, advantages and entropy
attached to logp's graph, equals the ``grad`` field [ESPO-OBJ]. Ill-conditioned comparisons
are rejected with ``assume``. CI-sized by the ``ci`` profile of tests/conftest.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers.fuzz_properties import FUNCTIONS, cases, run_case  # noqa: E402

# Extreme draws are often ill-conditioned for the comparison (rejected after the robustness
# checks ran); that filtering is expected, not a health problem.
FUZZ = settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _run(data, function):
    run_case(data.draw(cases(function), label="case"))


@pytest.mark.parametrize("function", ["espo_loss"])
@FUZZ
@given(data=st.data())
def test_ESPO_OBJ_and_ESPO_INPUT_fuzz_espo_loss_over_every_option(data, function):
    """[ESPO-INPUT] [ESPO-OBJ] [ESPO-METRICS] espo_loss over every ESPOConfig option."""
    _run(data, function)


@pytest.mark.parametrize("function", ["grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss"])
@FUZZ
@given(data=st.data())
def test_BASE_INPUT_fuzz_baseline_losses_over_every_config_field(data, function):
    """[BASE-INPUT] [BASE-METRICS] [BASE-AGG] every baseline over every config field."""
    _run(data, function)


@pytest.mark.parametrize("function", [
    "grpo_advantages",  # [ESPO-ADV] huge, tiny and offset rewards, valid subsets, ddof, eps
    "token_entropy",  # [ESPO-ENT] extreme logits, masked vocabularies, temperatures from 5e-324 to the float max
    "entropy_groups",  # [ESPO-GROUP] group ids equal exactly, every grouping, float32 and float64 entropies
    "group_clip_eps",  # [ESPO-CLIP] eps finite or an error naming alpha, equal in both backends
])
@FUZZ
@given(data=st.data())
def test_ESPO_ADV_and_ESPO_ENT_and_ESPO_GROUP_and_ESPO_CLIP_fuzz_the_components(data, function):
    """[ESPO-ADV] [ESPO-ENT] [ESPO-GROUP] [ESPO-CLIP] each building block, numpy against torch."""
    _run(data, function)


def test_fuzz_covers_every_function():
    assert set(FUNCTIONS) == {"espo_loss", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss",
                              "grpo_advantages", "token_entropy", "entropy_groups", "group_clip_eps"}
