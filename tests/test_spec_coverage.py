"""Cross-references between specs/, the code, the tests and the hand-worked cases.

Every clause (a heading ``### [ID] Title`` in specs/*.md) must be cited by the code
(``[ID]`` in espo_ref/), by at least one test (the id in tests/), and by at least one
hand-worked case (unless its section says "No golden case:" with a reason). Every id the
code or the cases cite must exist.
"""

import re
from pathlib import Path

from helpers.handworked import load_cases
from helpers.spec_clauses import CLAUSES

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"\[([A-Z]{2,}(?:-[A-Z0-9]+)+)\]")


def _text(folder: str, exclude=()) -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / folder).rglob("*.py")) if p.name not in exclude)


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


# ------------------------------------------------------------------ one hop from a clause

import ast  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402

import pytest  # noqa: E402

CODE_LINE = re.compile(r"^Code: (.+)$", re.M)
#: the numpy modules with a torch mirror of the same name (spec section = module)
MIRRORED = ("entropy", "grouping", "clipping", "ratio", "advantage", "aggregation", "surrogate", "metrics",
            "objective", "baselines")
#: public torch functions without a numpy twin, and why
TORCH_ONLY = {
    "grouping.group_width": "the number of group ids known from the config, so torch needs no sync to size a table",
    "baselines.row_mean_to_tokens": "autograd wrapper with an overflow-safe backward; numpy has the analytic grad",
    "metrics.raw_log_ratio": "the float64 log-ratio a float32 loss reports its metrics from; numpy is float64",
    "metrics.mean": "finite mean of a device sum fetched in one sync; numpy's is safe_mean",
}
#: public numpy functions without a torch twin, and why
NUMPY_ONLY = {
    "metrics.safe_mean": "torch sums on the device and fetches once (metrics.mean)",
    "metrics.clip_metrics": "torch fetches the common counts with each loss's own (one sync)",
}


def code_names(clause: str) -> list[str]:
    found = CODE_LINE.findall(CLAUSES[clause])
    assert len(found) == 1, f"[{clause}] needs exactly one 'Code:' line, found {len(found)}"
    names = re.findall(r"`([A-Za-z0-9_.]+)`", found[0])
    assert names, f"[{clause}] 'Code:' line names nothing"
    return names


def resolve(dotted: str):
    """A module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def torch_twin(dotted: str):
    """(numpy module name, torch object or None) for espo_ref.<mirrored module>.<name>."""
    parts = dotted.split(".")
    if len(parts) == 3 and parts[0] == "espo_ref" and parts[1] in MIRRORED + ("_checks",):
        module = importlib.import_module(f"espo_ref.torch.{parts[1]}")
        return parts[1], getattr(module, parts[2], None)
    return None, None


def assert_mirrored_signature(numpy_fn, torch_fn, what: str) -> None:
    """Same positional (and positional-or-keyword) parameters, names and defaults, in order;
    torch may add keyword-only parameters (``validate``, ``dtype``, ``device``)."""
    want = inspect.signature(numpy_fn).parameters
    got = inspect.signature(torch_fn).parameters
    numpy_keyword_only = [p for p in want.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    positional = [p for p in got.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    want_positional = [p for p in want.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in positional] == [p.name for p in want_positional], (what, list(got), list(want))
    assert [p.default for p in positional] == [p.default for p in want_positional], what
    for p in numpy_keyword_only:
        assert p.name in got and got[p.name].default == p.default, (what, p.name)


@pytest.mark.parametrize("clause", sorted(CLAUSES))
def test_every_clause_names_its_code_and_the_code_cites_it(clause):
    torch = pytest.importorskip("torch")  # noqa: F841 - the twins live in espo_ref.torch
    for dotted in code_names(clause):
        obj = resolve(dotted)
        assert f"[{clause}]" in (inspect.getdoc(obj) or ""), f"{dotted}'s docstring does not cite [{clause}]"
        module, twin = torch_twin(dotted)
        if module is None or inspect.isclass(obj):
            continue
        assert twin is not None, f"{dotted} has no torch twin espo_ref.torch.{module}.{dotted.rsplit('.', 1)[1]}"
        assert f"[{clause}]" in (inspect.getdoc(twin) or ""), f"its torch twin's docstring does not cite [{clause}]"
        assert_mirrored_signature(obj, twin, dotted)


def _public_functions(module) -> dict:
    return {name: fn for name, fn in vars(module).items()
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__}


@pytest.mark.parametrize("module", MIRRORED)
def test_each_torch_module_mirrors_its_numpy_module(module):
    """The same public functions, each with the same signature and citing the same clauses."""
    pytest.importorskip("torch")
    numpy_mod = importlib.import_module(f"espo_ref.{module}")
    torch_mod = importlib.import_module(f"espo_ref.torch.{module}")
    ours = {n for n in _public_functions(numpy_mod) if f"{module}.{n}" not in NUMPY_ONLY}
    theirs = {n for n in _public_functions(torch_mod) if f"{module}.{n}" not in TORCH_ONLY}
    assert ours == theirs, f"numpy only: {sorted(ours - theirs)}, torch only: {sorted(theirs - ours)}"
    for name in sorted(ours):
        numpy_fn, torch_fn = getattr(numpy_mod, name), getattr(torch_mod, name)
        assert_mirrored_signature(numpy_fn, torch_fn, f"{module}.{name}")
        cited = set(CITATION.findall(inspect.getdoc(numpy_fn) or ""))
        assert cited == set(CITATION.findall(inspect.getdoc(torch_fn) or "")), f"{module}.{name} cites differently"


def test_every_public_name_has_a_torch_twin():
    """Every function in espo_ref.__all__ is in espo_ref.torch.__all__ with the same signature."""
    pytest.importorskip("torch")
    import espo_ref
    import espo_ref.torch as et

    for name in espo_ref.__all__:
        obj = getattr(espo_ref, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # the version strings
        assert name in et.__all__, name
        if inspect.isfunction(obj):
            assert_mirrored_signature(obj, getattr(et, name), name)
        elif inspect.isclass(obj):
            assert getattr(et, name) is obj, f"{name}: torch must use the core's class"


def _asserting_tests() -> dict[str, str]:
    """test function name -> file, for the test functions that assert something (an ``assert``,
    ``pytest.raises`` or a helper named assert_*/check_*)."""
    found = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for sub in ast.walk(node):
                    call = sub.func if isinstance(sub, ast.Call) else None
                    name = getattr(call, "attr", None) or getattr(call, "id", None) or ""
                    if isinstance(sub, ast.Assert) or name == "raises" or name.startswith(("assert", "check_")):
                        found[node.name] = path.name
                        break
    return found


ASSERTING = _asserting_tests()


def _tests_named_for(clause: str) -> list[str]:
    """Tests named ``test_<ID>_...`` (``-`` as ``_``), possibly after other ids (``_and_<ID>``); a
    longer id (ESPO_GROUP_TOPFRAC) does not count for its prefix (ESPO_GROUP)."""
    token = re.compile(rf"(?:^test_|_)({re.escape(clause.replace('-', '_'))})(?=$|_[a-z0-9])")
    return [name for name in ASSERTING if token.search(name)]


@pytest.mark.parametrize("clause", sorted(CLAUSES))
def test_every_clause_has_a_test_named_for_it_that_asserts(clause):
    assert _tests_named_for(clause), (
        f"no test function named test_{clause.replace('-', '_')}_... (with an assert) under tests/")
