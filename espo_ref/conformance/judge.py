"""[CONF-ERRORS] The verdict on one case: what the implementation gave, against what the case expects.

A value case passes when every required output was returned and agrees with the expected value
within the case's tolerance ([CONF-COMPARE]); an expected-error case only when the
*implementation* raises naming the expected word. A failure names the clauses its first wrong
output points at, and the known misreading that reproduces it ([CONF-MISREADINGS]).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compare import compare_field, required_fields
from .functions import FIELD_ORDER, FUNCTIONS, suspects
from .golden import GoldenCase


@dataclass
class CaseResult:
    case_id: str
    clauses: list[str]
    status: str  # "pass", "fail", "unsupported", "xfail", "xpass", "error"
    fields: dict[str, dict] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)
    message: str = ""
    reproduce: str = ""
    diagnoses: list[dict] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    case: dict | None = None  # the full case (property cases, which have no golden file)
    unsupported_option: str = ""  # an option the engine does not offer, declared by its adapter (not run)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], {}, None)} | {"status": self.status}


def _format_failures(result: CaseResult, failed: list[str]) -> str:
    ordered = sorted(failed, key=lambda n: FIELD_ORDER.index(n) if n in FIELD_ORDER else len(FIELD_ORDER))
    parts = []
    for name in ordered:
        rep = result.fields[name]
        if "reason" in rep:
            parts.append(f"{name}: {rep['reason']}")
            continue
        if "max_abs" not in rep:  # integer or boolean output: compared exactly
            parts.append(f"{name}: {rep.get('bad')} of {rep.get('n')} differ, first {rep.get('first_bad')}")
            continue
        parts.append(f"{name}: {rep.get('bad')} of {rep.get('n')} bad, max abs {rep['max_abs']:.3g}, "
                     f"max rel {rep['max_rel']:.3g}, first {rep.get('first_bad')}")
    return "; ".join(parts)


def run_case(executor, case: GoldenCase, reproduce: str, fields=None, provides=None,
             diagnose: bool = True) -> CaseResult:
    """[CONF-ERRORS] Run one case; the status is pass, fail (the implementation's fault) or error (the
    harness's, or a timeout / exit / crash / malformed reply of the implementation). Never raises:
    a failure of the comparison itself is an error of the case."""
    result = CaseResult(case.case_id, case.clauses, "pass", reproduce=reproduce, requires=list(case.requires))
    try:
        outcome = executor.run(case)
        _judge(result, executor, case, outcome, fields, provides, diagnose)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the runner's own failure: an error, never a pass
        result.status = "error"
        result.suspects = list(case.clauses)
        result.message = f"the runner failed judging this case: {type(exc).__name__}: {exc}"
    return result


ERROR_KINDS = {"harness": "the adapter or runner failed (not the implementation's result)",
               "timeout": "timed out", "died": "the worker died", "exited": "the implementation exited",
               "protocol": "the worker's reply broke the protocol",
               "leftover": "the implementation left processes behind"}


def _judge(result: CaseResult, executor, case: GoldenCase, outcome, fields, provides, diagnose: bool) -> None:
    if outcome.kind == "raised" and outcome.error_type == "NotImplementedError" and case.requires:
        # an option the implementation does not offer: reported, not blamed on a clause
        result.status = "unsupported"
        result.message = f"unsupported option ({', '.join(case.requires)}): NotImplementedError: {outcome.message}"
        return
    word = case.expected.get("error")
    if outcome.kind in ERROR_KINDS:
        result.status = "error"
        result.suspects = list(case.clauses)
        result.message = f"{ERROR_KINDS[outcome.kind]}: {outcome.error_type}: {outcome.message}"
        if outcome.traceback:
            result.message += "\n" + outcome.traceback
        return
    if word is not None:
        if outcome.kind == "raised" and word in outcome.message:
            result.message = f"raised {outcome.error_type}: {outcome.message}"
            return
        result.status = "fail"
        result.suspects = list(case.clauses)
        if outcome.kind == "raised":
            result.message = (f"raised {outcome.error_type}: {outcome.message!r}, which does not name {word!r} "
                              f"(spec: error ~ {word})")
        else:
            result.message = f"expected an error naming {word!r}; the implementation returned normally"
        return
    if outcome.kind == "raised":
        result.status = "fail"
        result.suspects = list(case.clauses)
        result.message = f"raised {outcome.error_type}: {outcome.message} on a valid input"
        if diagnose:
            _diagnose(result, executor, case, None, outcome, fields, provides)
        return
    if outcome.kind == "bad_result":
        result.status = "fail"
        result.suspects = list(case.clauses)
        result.message = f"unusable result: {outcome.message}"
        return
    got = outcome.outputs
    failed, missing = _compare_outputs(result, case, got, fields, provides)
    if missing or failed:
        result.status = "fail"
        result.suspects = suspects(failed, case.clauses) if failed else list(case.clauses)
        parts = []
        if missing:
            parts.append(f"returned no {', '.join(missing)} (required: {', '.join(_required(case, provides, fields))}; "
                         f"--fields narrows the check)")
        if failed:
            parts.append(_format_failures(result, failed))
        result.message = "; ".join(parts)
        if failed and diagnose:
            _diagnose(result, executor, case, got, outcome, fields, provides)


def _required(case, provides, fields) -> list[str]:
    return required_fields(case, provides, fields)[0]


def _compare_outputs(result: CaseResult, case: GoldenCase, got: dict, fields, provides) -> tuple[list, list]:
    """Compare the required outputs into ``result.fields``; returns (failed, missing) names."""
    required, result.not_compared = required_fields(case, provides, fields)
    missing = [k for k in required if k not in got]
    for name in required:
        if name in got:
            result.fields[name] = compare_field(case, name, got[name], case.expected[name])
    if "metrics" in result.fields:
        skipped = [k for k in case.expected["metrics"] if k not in got["metrics"]]
        result.not_compared += [f"metrics.{k}" for k in skipped]
        if not result.fields["metrics"]["keys"]:
            del result.fields["metrics"]
            missing.append("metrics")
    failed = [name for name, rep in result.fields.items() if not rep["ok"]]
    return failed, missing


def float64_twin(case: GoldenCase) -> GoldenCase:
    """[CONF-MISREADINGS] The same inputs and config in float64, with the reference's float64 outputs."""
    from .functions import reference_outputs

    spec = FUNCTIONS[case.function]
    # float64 arrays: a batch saved by a float32 trainer holds float32 ones, and a reading computed on
    # those (numpy keeps float32 through where and subtraction) would miss a float64 implementation
    inputs = {name: np.asarray(value, dtype=np.float64) if np.asarray(value).dtype.kind == "f" else value
              for name, value in case.inputs.items()}
    expected = reference_outputs(spec, inputs, case.config, case.kwargs)
    return GoldenCase(case.case_id + "@float64", case.function, case.clauses, "float64", inputs, case.config,
                      case.kwargs, expected, case.source)


def _first_wrong(result: CaseResult) -> str:
    for name in sorted(result.fields, key=lambda n: FIELD_ORDER.index(n) if n in FIELD_ORDER else len(FIELD_ORDER)):
        rep = result.fields[name]
        if rep["ok"]:
            continue
        if "reason" in rep:
            return f"{name} ({rep['reason']})"
        bad = rep.get("first_bad") or {}
        where = f"[{bad['key']}]" if "key" in bad else (f"[{', '.join(map(str, bad['index']))}]" if bad.get("index")
                                                        else "")
        return f"{name}{where}: got {bad.get('got')!r}, want {bad.get('want')!r}"
    return "none"


def _diagnose(result: CaseResult, executor, case: GoldenCase, got, outcome, fields, provides) -> None:
    """[CONF-MISREADINGS] Name the catalogued readings that reproduce the implementation's outputs
    within the float64 tolerance: on the case itself when it is float64, else on its float64 twin
    (the implementation is called once more). When none fits, say so and name the first wrong output."""
    from .misreadings import diagnose

    where = ""
    if case.dtype != "float64":
        twin = float64_twin(case)
        twin_outcome = executor.run(twin)
        if twin_outcome.kind == "outputs":
            twin_result = CaseResult(twin.case_id, twin.clauses, "pass")
            failed, missing = _compare_outputs(twin_result, twin, twin_outcome.outputs, fields, provides)
            if not failed and not missing:
                result.message = (f"{case.dtype} precision: on the float64 twin of this case your outputs agree with "
                                  f"the reference, so the difference comes from {case.dtype} arithmetic (where "
                                  "the reference rounds, or the order of operations) -- " + result.message)
                return
            case, got, outcome = twin, twin_outcome.outputs, twin_outcome
            compared = list(twin_result.fields)
            where = " (on the float64 twin)"
        elif twin_outcome.kind == "raised" and got is None:
            case, outcome, compared = twin, twin_outcome, []
            where = " (on the float64 twin)"
        else:
            result.message = f"no catalogued reading fits (the float64 twin gave no outputs); first wrong output " \
                             f"{_first_wrong(result)} -- " + result.message
            return
    else:
        compared = list(result.fields)
    backend = (getattr(executor, "info", None) or {}).get("backend")  # a numpy function cannot leave a graph attached
    found = diagnose(case, got, compared=compared, raised=outcome if got is None else None, backend=backend)
    if not found:
        if got is not None:
            result.message = (f"no catalogued reading fits{where}; first wrong output {_first_wrong(result)} -- "
                              + result.message)
        return
    result.diagnoses = [m.to_json() for m in found]
    result.suspects = list(dict.fromkeys([m.clause for m in found] + result.suspects))
    names = "; ".join(f"{m.name} [{m.clause}]: {m.summary}" for m in found)
    result.message = f"your outputs match reading{where} {names} -- " + result.message if got is not None else \
        f"{names}{where} -- " + result.message


def _repro_prefix(impl: str) -> str:
    """PYTHONPATH=... when the implementation's package is not importable from a plain shell."""
    module = sys.modules.get(impl.split(":", 1)[0].split(".")[0])
    path = getattr(module, "__file__", None)
    if not path:
        return ""
    root = Path(path).resolve().parent
    if Path(path).name == "__init__.py":
        root = root.parent
    if any(part in ("site-packages", "dist-packages") for part in root.parts):
        return ""
    here = Path.cwd().resolve()
    return "" if root == here else f"PYTHONPATH={shlex.quote(str(root))} "


def reproduce_command(target, case_id: str, profile: str, fields, isolate: bool) -> str:
    parts = [f"espo-ref conform --impl {target.impl} --function {target.function} --adapter {target.adapter}",
             f"--backend {target.backend} --device {target.device}"]
    if profile != "full":  # the profile selects which property variants are drawn
        parts.append(f"--profile {profile}")
    if fields is not None:
        parts.append(f"--fields {','.join(fields)}")
    if not isolate:
        parts.append("--no-isolation")
    parts.append(f"--include {shlex.quote(case_id)}")
    return _repro_prefix(target.impl) + " ".join(parts)
