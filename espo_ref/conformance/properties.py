"""Property cases: hypothesis-generated inputs checked against the numpy reference in-process.

Where the golden cases are fixed, these explore: random shapes, masks, ties, log-ratio
scales and every option of the function's config, with shrinking to a minimal failing
input. Needs the ``hypothesis`` package.
"""

from __future__ import annotations

import math

import numpy as np

from .functions import FUNCTIONS, reference_outputs
from .golden import BASELINE_VARIANTS, COMMON_ESPO_CLAUSES, ESPO_VARIANTS, GoldenCase
from .runner import run_case


PROPERTY_FUNCTIONS = ("espo_loss",) + tuple(sorted({fn for fn, *_ in BASELINE_VARIANTS}))


def _variants(function: str):
    if function == "espo_loss":
        return [(name, cfg, clauses + COMMON_ESPO_CLAUSES) for name, cfg, clauses in ESPO_VARIANTS]
    found = [(name, cfg, clauses) for fn, name, cfg, clauses in BASELINE_VARIANTS if fn == function]
    if not found:
        raise ValueError(f"no property cases for function {function!r}")
    return found


def property_cases_strategy(function: str):
    from hypothesis import strategies as st

    variants = _variants(function)
    finite = dict(allow_nan=False, allow_infinity=False)

    @st.composite
    def cases(draw):
        name, overrides, clauses = draw(st.sampled_from(variants), label="variant")
        B = draw(st.integers(1, 6), label="B")
        T = draw(st.integers(1, 12), label="T")
        mask = np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T), label="mask")).reshape(B, T)
        if not mask.any():
            mask[0, 0] = True
        old = np.array(draw(st.lists(st.floats(-8.0, 0.0, **finite), min_size=B * T, max_size=B * T),
                            label="old_logp")).reshape(B, T)
        scale = draw(st.sampled_from([1e-3, 0.05, 0.5, 5.0]), label="scale")
        noise = np.array(draw(st.lists(st.floats(-1.0, 1.0, **finite), min_size=B * T, max_size=B * T),
                              label="noise")).reshape(B, T)
        logp = old + scale * noise
        adv = np.array(draw(st.lists(st.sampled_from([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0]), min_size=B, max_size=B),
                            label="advantages"))
        inputs = {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}
        config = dict(overrides)
        if function == "espo_loss":
            vocab = draw(st.sampled_from([16, 1000, 151_936]), label="vocab")
            levels = draw(st.lists(st.floats(0.0, 1.0, **finite), min_size=1, max_size=4), label="entropy_levels")
            idx = np.array(draw(st.lists(st.integers(0, len(levels) - 1), min_size=B * T, max_size=B * T),
                                label="entropy_index")).reshape(B, T)
            inputs["entropy"] = np.array(levels)[idx] * math.log(vocab)
            config["vocab_size"] = vocab
        expected = reference_outputs(FUNCTIONS[function], inputs, config, {})
        return GoldenCase(f"property/{function}/{name}", function, list(clauses), "float64", inputs, config, {},
                          expected, "property")

    return cases()


def run_properties(adapter, function: str, examples: int) -> list:
    """Run ``examples`` property cases; returns the CaseResults of the failing ones (shrunk)."""
    from hypothesis import HealthCheck, given, settings

    failures: list = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=property_cases_strategy(function))
    def check(case):
        result = run_case(adapter, case, "re-run with the same --property N (derandomized)")
        if result.status != "pass":
            failures[:] = [result]
            raise AssertionError(result.message)

    try:
        check()
    except AssertionError:
        pass
    return failures
