"""Cross-references between specs/, the code, the tests and the hand-worked cases.

Every clause (a heading ``### [ID] Title`` in specs/*.md) must be cited by the code
(``[ID]`` in espo_ref/), by at least one test (the id in tests/), and by at least one
hand-worked case (unless its section says "No golden case:" with a reason). Every id the
code or the cases cite must exist.
"""

import re
from pathlib import Path

from handworked import load_cases

ROOT = Path(__file__).resolve().parent.parent
HEADING = re.compile(r"^### \[([A-Z][A-Z0-9\-]+)\] (.+)$", re.M)
CITATION = re.compile(r"\[([A-Z]{2,}(?:-[A-Z0-9]+)+)\]")


def clauses() -> dict[str, str]:
    """Clause id -> the text of its section."""
    out = {}
    for path in sorted((ROOT / "specs").glob("*.md")):
        text = path.read_text()
        heads = list(HEADING.finditer(text))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            nxt = re.search(r"^#{1,3} ", text[m.end():end], re.M)
            body = text[m.end(): m.end() + nxt.start()] if nxt else text[m.end():end]
            assert m.group(1) not in out, f"clause {m.group(1)} is defined twice"
            out[m.group(1)] = body
    return out


def _text(folder: str, exclude=()) -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / folder).rglob("*.py")) if p.name not in exclude)


CLAUSES = clauses()
CODE = _text("espo_ref")
TESTS = _text("tests", exclude={"test_spec_coverage.py"})


def _mentions(text: str, clause: str) -> bool:
    return re.search(rf"(?<![A-Z0-9\-]){re.escape(clause)}(?![A-Z0-9\-])", text) is not None or (
        clause.replace("-", "_") in text
    )


def test_spec_has_clauses():
    assert {"ESPO-ENT", "ESPO-GROUP", "ESPO-CLIP", "ESPO-RATIO", "ESPO-ADV", "ESPO-OBJ"} <= set(CLAUSES)


def test_every_clause_is_implemented():
    missing = [c for c in CLAUSES if f"[{c}]" not in CODE]
    assert not missing, f"clauses without an implementation citing them ([ID] in espo_ref/): {missing}"


def test_every_clause_is_tested():
    missing = [c for c in CLAUSES if not _mentions(TESTS, c)]
    assert not missing, f"clauses no test under tests/ names: {missing}"


def test_every_clause_has_a_golden_case():
    cited = {c for case in load_cases() for c in case.clauses}
    missing = [c for c, body in CLAUSES.items() if c not in cited and "No golden case:" not in body]
    assert not missing, f"clauses without a hand-worked case (or a 'No golden case:' reason): {missing}"


def test_code_cites_only_existing_clauses():
    cited = set(CITATION.findall(CODE))
    unknown = sorted(c for c in cited if c not in CLAUSES)
    assert not unknown, f"code cites clauses the spec does not define: {unknown}"


def test_cases_cite_only_existing_clauses():
    unknown = sorted({(case.case_id, c) for case in load_cases() for c in case.clauses if c not in CLAUSES})
    assert not unknown, f"hand-worked cases cite clauses the spec does not define: {unknown}"


def test_case_ids_are_unique():
    ids = [case.case_id for case in load_cases()]
    assert len(ids) == len(set(ids)), f"duplicate hand-worked case ids: {sorted({i for i in ids if ids.count(i) > 1})}"
