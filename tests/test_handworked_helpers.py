"""Tests of the hand-worked-case helpers themselves: a wrong expectation must fail."""

import copy
import math

import pytest

from espo_ref.tolerances import tolerance
from helpers.handworked import RUNNERS, check_case, evaluate, load_cases

TOL = tolerance("numpy", "float64", "value")


def test_evaluate_expressions():
    assert evaluate("1/4*ln(16)") == pytest.approx(math.log(16) / 4)
    assert evaluate("[0, -inf]") == [0, -math.inf]
    assert evaluate("top_fraction") == "top_fraction"
    with pytest.raises(ValueError):
        evaluate("__import__('os')")


def _case(case_id):
    return copy.deepcopy(next(c for c in load_cases() if c.case_id == case_id))


def test_wrong_scalar_expectation_fails():
    case = _case("HW-004")
    case.expects = [("loss", "=", "-1/3")]
    assert check_case(case, RUNNERS[case.function], TOL)


def test_wrong_token_expectation_fails():
    case = _case("HW-006")
    case.rows[0]["clipped"] = "-"
    case.rows[1]["grad"] = "-1/5"
    failures = check_case(case, RUNNERS[case.function], TOL)
    assert any("clipped" in f for f in failures) and any("grad" in f for f in failures)


def test_wrong_vector_expectation_fails():
    case = _case("HW-002")
    case.rows[1]["n_high"] = "8"
    assert check_case(case, RUNNERS[case.function], TOL)


def test_error_expectation_requires_an_error():
    case = _case("HW-020")
    case.rows[0]["entropy"] = "1/2*ln(16)"
    assert check_case(case, RUNNERS[case.function], TOL)
