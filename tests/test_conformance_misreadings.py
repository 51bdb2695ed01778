"""[CONF-MISREADINGS] The catalogue of misreadings judged by wrong implementations.

For each catalogued reading a mutant that commits exactly that mistake (tests/helpers/mutants.py,
READING_MUTANTS) is diagnosed as that reading on every case it fails; mutants whose mistake is in
no catalogue (INNOCENT_MUTANTS) are never given a name. A reading is named only when it
reproduces the implementation's outputs within the float64 rows of the tolerance table (never a
lower-precision case's looser rows), and never when it equals the reference on what was compared.
"""

from pathlib import Path

import numpy as np
import pytest

from espo_ref.conformance.adapters import NativeAdapter
from espo_ref.conformance.functions import FUNCTIONS, reference_outputs
from espo_ref.conformance.golden import GoldenCase, load
from espo_ref.conformance.misreadings import BY_NAME, MISREADINGS, agrees, diagnose, float64_tolerance
from espo_ref.conformance.runner import run_conformance
from espo_ref.tolerances import tolerance

from helpers.mutants import INNOCENT_MUTANTS, READING_MUTANTS

CASES = load()
BY_ID = {c.case_id: c for c in CASES}
HERE = Path(__file__).resolve().parent


def _names(found) -> list[str]:
    return [m["name"] if isinstance(m, dict) else m.name for m in found]


def _run(mutant):
    if mutant.backend == "torch":
        pytest.importorskip("torch")
    return run_conformance(mutant.fn, function=mutant.function, backend=mutant.backend, isolate=False,
                           include=list(mutant.include), cases=CASES)


def _twin(case: GoldenCase) -> GoldenCase:
    """The float64 twin of a lower-precision case (its inputs are already rounded to its dtype)."""
    expected = reference_outputs(FUNCTIONS[case.function], case.inputs, case.config, case.kwargs)
    return GoldenCase(case.case_id, case.function, case.clauses, "float64", case.inputs, case.config, case.kwargs,
                      expected, case.source)


# Readings no golden case tells apart from another (specs/conformance.md says so)
AMBIGUOUS = {"clamp-ge": "HW-026, its only case, cannot tell it from literal-eq9"}


def test_CONF_MISREADINGS_every_reading_has_a_mutant_that_commits_it():
    assert set(READING_MUTANTS) == set(BY_NAME)


@pytest.mark.parametrize("name", sorted(READING_MUTANTS))
def test_CONF_MISREADINGS_a_mutant_is_diagnosed_as_the_reading_it_commits(name):
    report = _run(READING_MUTANTS[name])
    assert not [r.case_id for r in report.results if r.status == "error"], [r.message for r in report.results]
    failed = [r for r in report.results if r.status == "fail"]
    assert failed, f"the {name} mutant passed every selected case"
    unnamed = [(r.case_id, _names(r.diagnoses), r.message[:300]) for r in failed if name not in _names(r.diagnoses)]
    assert not unnamed, f"{name}: failing cases that do not name it: {unnamed}"
    if name in AMBIGUOUS:
        return
    # and some case tells it from every other reading (a numpy implementation cannot have left a
    # constant attached: the runner may not say which backend it called)
    graph = set() if READING_MUTANTS[name].backend == "torch" else {m.name for m in MISREADINGS if m.needs_graph}
    assert any([n for n in _names(r.diagnoses) if n not in graph] == [name] for r in failed), \
        [(r.case_id, _names(r.diagnoses)) for r in failed]


@pytest.mark.parametrize("name", sorted(INNOCENT_MUTANTS))
def test_CONF_MISREADINGS_a_mistake_outside_the_catalogue_is_never_named(name):
    report = _run(INNOCENT_MUTANTS[name])
    failed = [r for r in report.results if r.status == "fail"]
    assert failed, f"the {name} mutant passed every selected case"
    named = [(r.case_id, _names(r.diagnoses)) for r in failed if r.diagnoses]
    assert not named, f"{name} commits no catalogued mistake, yet: {named}"


def _caught(reading_name: str, dtype: str) -> tuple[GoldenCase, dict]:
    """The first case of ``dtype`` on which a reading's loss or grad fails the reference."""
    reading = BY_NAME[reading_name]
    for case in CASES:
        if case.dtype != dtype or case.function not in reading.functions or "error" in case.expected:
            continue
        out = reading.evaluate(case)
        if out and not all(agrees(f, out[f], case.expected[f], float64_tolerance()) for f in ("loss", "grad")):
            return case, {"loss": out["loss"], "grad": out["grad"]}
    raise AssertionError(f"no {dtype} case catches {reading_name}")


def _scaled(got: dict, factor: float) -> dict:
    return {"loss": got["loss"] * factor, "grad": got["grad"] * factor}


def test_CONF_MISREADINGS_named_only_within_the_float64_tolerance():
    case, got = _caught("literal-eq9", "float64")
    tol = float64_tolerance()
    assert tol == {k: tolerance("numpy", "float64", k) for k in ("value", "grad")}
    assert "literal-eq9" in _names(diagnose(case, got, ["loss", "grad"]))
    assert "literal-eq9" in _names(diagnose(case, _scaled(got, 1 + tol["grad"].rtol / 2), ["loss", "grad"]))
    # a relative 1e-9 off: far inside float32's rows, outside float64's
    assert diagnose(case, _scaled(got, 1 + 1e-9), ["loss", "grad"]) == []


def test_CONF_MISREADINGS_a_lower_precision_case_is_judged_at_float64_not_at_its_own_tolerance():
    case, got = _caught("entropy-bits", "float32")
    off = _scaled(got, 1 + 1e-7)  # what float32 arithmetic gives: within the case's float32 tolerance
    assert "entropy-bits" in _names(diagnose(case, got, ["loss", "grad"]))
    assert diagnose(case, off, ["loss", "grad"]) == []
    # a caller may still pass rows explicitly
    rows = {k: tolerance("torch", "float32", k) for k in ("value", "grad")}
    assert "entropy-bits" in _names(diagnose(case, off, ["loss", "grad"], tolerance=rows))


def test_CONF_MISREADINGS_a_float32_mutant_is_named_on_the_float64_twin_of_its_case():
    """The torch mutant computes in float32 on a float32 case: its outputs reproduce no float64
    reading there; on the float64 twin of the case they reproduce its reading exactly."""
    pytest.importorskip("torch")
    mutant = READING_MUTANTS["advantages-not-detached"]
    case = BY_ID["espo_loss/default/float32/0"]
    got = NativeAdapter(mutant.fn, "espo_loss", "torch").run(case)
    compared = [k for k in got if k in case.expected]
    assert not agrees("grad", got["grad"], case.expected["grad"], {k: tolerance("torch", "float32", k)
                                                                  for k in ("value", "grad")})
    assert diagnose(case, got, compared) == []
    twin = _twin(case)
    got = NativeAdapter(mutant.fn, "espo_loss", "torch").run(twin)
    assert _names(diagnose(twin, got, compared)) == ["advantages-not-detached"]


def test_CONF_MISREADINGS_a_reading_equal_to_the_reference_is_not_named():
    """An implementation wrong only in a metric no reading computes: the readings that equal the
    reference on this case reproduce every output they have, yet they explain nothing."""
    case = BY_ID["espo_loss/default/float64/0"]
    got = {k: v for k, v in case.expected.items() if k != "metrics"}
    got["metrics"] = {**case.expected["metrics"], "approx_kl": case.expected["metrics"]["approx_kl"] + 1.0}
    compared = list(got)
    tol = float64_tolerance()
    coincident = []
    for m in MISREADINGS:
        out = m.evaluate(case) if case.function in m.functions else None
        if out and all(agrees(f, got[f], out[f], tol) for f in compared if f in out):
            coincident.append(m.name)
    assert "no-clamp" in coincident  # nothing is clamped here
    assert diagnose(case, got, compared) == []


def test_CONF_MISREADINGS_a_numpy_implementation_is_never_told_it_forgot_a_detach():
    case, got = _caught("old-logp-not-detached", "float64")
    assert not np.any(got["grad"])
    assert "old-logp-not-detached" in _names(diagnose(case, got, ["loss", "grad"]))
    graph = {m.name for m in MISREADINGS if m.needs_graph}
    assert graph == {"old-logp-not-detached", "entropy-not-detached", "advantages-not-detached"}
    assert not graph & set(_names(diagnose(case, got, ["loss", "grad"], backend="numpy")))


def test_CONF_MISREADINGS_renormalised_advantages_follow_numpy_and_torch_std():
    """adv-batch-renorm is the reference fed numpy's (A - mean) / (std + 1e-8) (ddof 0),
    adv-batch-renorm-bessel torch's (ddof 1); a lone response has no Bessel std: it does not apply."""
    torch = pytest.importorskip("torch")
    case = BY_ID["espo_loss/default/float64/0"]
    adv = case.inputs["advantages"]
    assert adv.ndim == 1 and adv.size > 1
    for name, std in (("adv-batch-renorm", np.std(adv)), ("adv-batch-renorm-bessel", float(torch.tensor(adv).std()))):
        renormalised = (adv - adv.mean()) / (std + 1e-8)
        want = reference_outputs(FUNCTIONS["espo_loss"], {**case.inputs, "advantages": renormalised}, case.config, {})
        got = BY_NAME[name].evaluate(case)
        assert all(agrees(f, got[f], want[f], float64_tolerance()) for f in ("loss", "grad", "clipped_low", "weight"))
    lone = next(c for c in CASES if c.function == "espo_loss" and c.inputs["advantages"].shape == (1,))
    assert BY_NAME["adv-batch-renorm-bessel"].evaluate(lone) is None


# specs/conformance.md: a case that tells each newer reading from every other one on loss and grad
DISCRIMINATING = {"ppo-token-ratio": "handworked/HW-006", "adv-batch-renorm": "espo_loss/default/float64/0",
                  "adv-batch-renorm-bessel": "espo_loss/default/float64/0",
                  "batch-top-fraction": "espo_loss/default/float64/0", "old-logp-not-detached": "handworked/HW-004",
                  "entropy-not-detached": "handworked/HW-006", "advantages-not-detached": "handworked/HW-004",
                  "eps-over-log2-vocab": "handworked/HW-006", "ratio-clamped": "handworked/HW-008"}


@pytest.mark.parametrize("name", sorted(DISCRIMINATING))
def test_CONF_MISREADINGS_the_case_the_spec_cites_tells_the_reading_apart(name):
    case = BY_ID[DISCRIMINATING[name]]
    assert DISCRIMINATING[name].removeprefix("handworked/") in (HERE.parent / "specs" / "conformance.md").read_text()
    out = BY_NAME[name].evaluate(case)
    got = {"loss": out["loss"], "grad": out["grad"]}
    assert not all(agrees(f, got[f], case.expected[f], float64_tolerance()) for f in got)
    assert _names(diagnose(case, got, list(got), backend="torch")) == [name]
