"""Every hand-worked case of specs/*.md, checked against the numpy reference."""

import pytest

from espo_ref.tolerances import tolerance
from helpers.handworked import RUNNERS, check_case, load_cases

CASES = load_cases()


def test_handworked_cases_exist():
    """The spec holds at least ten hand-worked ESPO cases, each with clauses and a function."""
    espo = [c for c in CASES if c.source.startswith("ESPO.md")]
    assert len(espo) >= 10
    for case in CASES:
        assert case.clauses, f"{case.case_id} ({case.source}) names no clause"
        assert case.function in RUNNERS, f"{case.case_id} ({case.source}): no runner for {case.function!r}"
        assert case.rows and case.header, f"{case.case_id} ({case.source}) has no table"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.case_id}[{','.join(c.clauses)}]" for c in CASES])
def test_handworked(case):
    failures = check_case(case, RUNNERS[case.function], tolerance("numpy", "float64", "value"))
    assert not failures, f"{case.case_id} {case.title} ({case.source}; clauses {case.clauses}):\n  " + "\n  ".join(failures)
