"""The conformance runner: golden cases (and optional property cases) against an implementation.

specs/conformance.md is the normative description. A value case passes when every required
output was returned and agrees with the expected value within the case's tolerance
(|got - want| <= atol + rtol |want|; exact for integer and boolean outputs); a loss case
always requires ``loss`` and ``grad`` unless the user narrows the check (``fields``). An
expected-error case passes only when the *implementation* raises and its message names the
expected word. An exception of the adapter or the runner, a timeout, a sys.exit or a crash
of the worker is an ERROR, never a pass. A failure names the case, the clauses its first
wrong output points at, the known misreading of the spec that reproduces it (when one does),
max abs / rel error, how many elements were bad, and a command that reproduces it.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import SPEC_VERSION
from .._io import write_atomic
from ..tolerances import Tolerance, compare
from .execution import InProcessExecutor, SetupError, Target, WorkerExecutor, detect_backend, import_path, load_object
from .functions import FIELD_ORDER, FUNCTIONS, LOSS_CORE_FIELDS, suspects
from .golden import GoldenCase, load

PROFILES = ("core", "full")
XFAIL_DIR = Path(__file__).resolve().parent / "xfail"
STATUSES = ("pass", "fail", "unsupported", "error", "xfail", "xpass")

__all__ = ["run_conformance", "format_report", "write_report", "write_junit", "read_xfail_file", "select",
           "load_impl", "detect_backend", "SetupError", "Report", "CaseResult", "PROFILES", "RunInterrupted",
           "Terminated"]


def load_impl(spec: str) -> Callable:
    """``package.module:callable`` (dots after the colon walk attributes)."""
    return load_object(spec)


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

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], {}, None)} | {"status": self.status}


@dataclass
class Report:
    impl: str
    function: str
    adapter: str
    backend: str
    device: str
    profile: str = "full"
    fields: list[str] | None = None
    isolated: bool = False
    results: list[CaseResult] = field(default_factory=list)
    impl_version: str | None = None
    property_examples: int = 0
    error: str | None = None
    calling_convention: dict | None = None

    @property
    def unexpected(self) -> list[CaseResult]:
        return [r for r in self.results if r.status in ("fail", "unsupported", "error", "xpass")]

    @property
    def conformant(self) -> bool:
        """[CONF-EXIT] No unexpected result, and at least one case passed (a run in which every
        case is expected to fail shows nothing conforms)."""
        return self.error is None and not self.unexpected and any(r.status == "pass" for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def failing_clauses(self) -> dict[str, int]:
        """How many failing cases point at each clause."""
        out: dict[str, int] = {}
        for r in self.results:
            if r.status in ("fail", "error"):
                for c in r.suspects:
                    out[c] = out.get(c, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def unsupported_options(self) -> dict[str, int]:
        """Options whose cases the implementation declined (NotImplementedError)."""
        out: dict[str, int] = {}
        for r in self.results:
            if r.status == "unsupported":
                for option in r.requires:
                    out[option] = out.get(option, 0) + 1
        return out

    def not_compared(self) -> list[str]:
        """Expected outputs that were never compared in any case (narrowed or not returned)."""
        seen: dict[str, None] = {}
        for r in self.results:
            for name in r.not_compared:
                seen[name] = None
        return list(seen)

    def to_json(self) -> dict:
        return {
            "spec_version": SPEC_VERSION,
            "impl": self.impl,
            "impl_version": self.impl_version,
            "function": self.function,
            "adapter": self.adapter,
            "backend": self.backend,
            "device": self.device,
            "profile": self.profile,
            "fields": self.fields,
            "isolated": self.isolated,
            "verdict_protected": self.isolated,
            "calling_convention": self.calling_convention,
            "property_examples": self.property_examples,
            "conformant": self.conformant,
            "error": self.error,
            "counts": self.counts(),
            "failing_clauses": self.failing_clauses(),
            "unsupported_options": self.unsupported_options(),
            "not_compared": self.not_compared(),
            "cases": [r.to_json() for r in self.results],
        }


# --- selection ----------------------------------------------------------------------------


def shipped_xfail_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(XFAIL_DIR.glob("*.txt"))}


def read_xfail_file(path) -> dict[str, str]:
    """Lines ``PATTERN  # reason``; blank lines and lines starting with # are ignored.

    ``path`` may also name a file shipped with the package (``verl-0.9.1``)."""
    p = Path(path)
    if not p.exists() and str(path) in shipped_xfail_files():
        p = shipped_xfail_files()[str(path)]
    if not p.is_file():
        shipped = ", ".join(shipped_xfail_files()) or "none"
        raise SetupError(f"--xfail-file {path}: no such file (shipped files: {shipped})")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SetupError(f"--xfail-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SetupError(f"--xfail-file {path}: cannot read it: {exc.strerror}") from None
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        pattern = pattern.strip()
        if not pattern or any(c.isspace() for c in pattern):
            raise SetupError(f"--xfail-file {path}:{lineno}: expected 'PATTERN  # reason', got {line!r}")
        out[pattern] = reason.strip() or "listed in the xfail file"
    return out


def _matches(case_id: str, clauses, patterns) -> bool:
    return any(fnmatch.fnmatchcase(case_id, p) or any(fnmatch.fnmatchcase(c, p) for c in clauses) for p in patterns)


def in_profile(requires: list[str], profile: str) -> bool:
    """[CONF-LEVELS] core: the cases of the default options only; full: every case."""
    if profile not in PROFILES:
        raise SetupError(f"--profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    return profile == "full" or not requires


def select(cases: list[GoldenCase], function: str, include=(), exclude=(), profile: str = "full") -> list[GoldenCase]:
    chosen = [c for c in cases if c.function == function and in_profile(c.requires, profile)]
    if include:
        chosen = [c for c in chosen if _matches(c.case_id, c.clauses, include)]
    if exclude:
        chosen = [c for c in chosen if not _matches(c.case_id, c.clauses, exclude)]
    return chosen


# --- comparison ---------------------------------------------------------------------------


def _tol(case: GoldenCase, kind: str) -> Tolerance:
    t = case.tolerance()[kind]
    return Tolerance(t["rtol"], t["atol"], "case tolerance")


def compare_field(case: GoldenCase, name: str, value, want) -> dict:
    if name == "metrics":
        keys = [k for k in want if k in value]
        rep = compare([value[k] for k in keys], [want[k] for k in keys], _tol(case, "value"))
        rep["keys"] = keys
        if not rep["ok"]:
            rep["first_bad"]["key"] = keys[rep["first_bad"]["index"][0]]
        return rep
    want_arr, got_arr = np.asarray(want), np.asarray(value)
    if want_arr.dtype.kind in "biu":
        if got_arr.shape != want_arr.shape:
            return {"ok": False, "reason": f"shape {got_arr.shape} != {want_arr.shape}", "bad": int(want_arr.size),
                    "n": int(want_arr.size)}
        if got_arr.dtype.kind == "f" and not np.all(np.isfinite(got_arr)):
            bad = ~np.isfinite(got_arr)
        else:
            bad = got_arr.astype(np.float64) != want_arr.astype(np.float64)
        rep = {"ok": not bad.any(), "bad": int(bad.sum()), "n": int(bad.size)}
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            g = got_arr[idx]
            rep["first_bad"] = {"index": list(idx), "got": int(g) if np.isfinite(g) else float(g),
                                "want": int(want_arr[idx])}
        return rep
    return compare(got_arr, want_arr, _tol(case, "grad" if name == "grad" else "value"))


def required_fields(case: GoldenCase, provides, fields) -> tuple[list[str], list[str]]:
    """[CONF-COMPARE] (required, not compared) output names of a value case.

    Required: for a loss, ``loss`` and ``grad`` plus every expected field the adapter provides
    (all of them when ``provides`` is None); for a component, its output. ``fields`` (the
    user's narrowing) removes the others; they are reported as not compared."""
    expected = [k for k in case.expected if k != "error"]
    spec = FUNCTIONS[case.function]
    if spec.is_loss:
        required = [k for k in expected if k in LOSS_CORE_FIELDS or provides is None or k in provides]
    else:
        required = list(expected)
    if fields is not None:
        required = [k for k in required if k in fields]
    return required, [k for k in expected if k not in required]


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
    expected = reference_outputs(spec, case.inputs, case.config, case.kwargs)
    return GoldenCase(case.case_id + "@float64", case.function, case.clauses, "float64", case.inputs, case.config,
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
    found = diagnose(case, got, compared=compared, raised=outcome if got is None else None)
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


# --- calling conventions ------------------------------------------------------------------

# [CONF-CALL] Other argument orders people write a loss in, tried when nearly every case fails:
# (name, the order of the function's inputs, advice). "verl" is compute_policy_loss's order.
CALLING_CONVENTIONS: dict[str, tuple[tuple[str, tuple[str, ...], str], ...]] = {
    "espo_loss": (
        ("logp and old_logp swapped", ("old_logp", "logp", "entropy", "mask", "advantages"),
         "your function takes old_logp first and logp second"),
        ("verl's order", ("old_logp", "logp", "advantages", "mask", "entropy"),
         "your function takes verl's order (old_log_prob, log_prob, advantages, response_mask, entropy)"),
        ("mask and advantages swapped", ("logp", "old_logp", "entropy", "advantages", "mask"),
         "your function takes advantages before mask"),
        ("entropy last", ("logp", "old_logp", "mask", "advantages", "entropy"),
         "your function takes entropy after (logp, old_logp, mask, advantages)"),
    ),
    "_baseline": (
        ("logp and old_logp swapped", ("old_logp", "logp", "mask", "advantages"),
         "your function takes old_logp first and logp second"),
        ("verl's order", ("old_logp", "logp", "advantages", "mask"),
         "your function takes verl's order (old_log_prob, log_prob, advantages, response_mask); for a verl "
         "policy loss itself use --adapter verl"),
        ("mask and advantages swapped", ("logp", "old_logp", "advantages", "mask"),
         "your function takes advantages before mask"),
    ),
}
PROBED_ADAPTERS = ("native", "torch-loss")


def conventions_for(function: str):
    if function in CALLING_CONVENTIONS:
        return CALLING_CONVENTIONS[function]
    return CALLING_CONVENTIONS["_baseline"] if function.endswith("_loss") else ()


def probe_calling_convention(executor, report: "Report", chosen: list[GoldenCase], provides) -> dict | None:
    """[CONF-CALL] When nearly every value case failed, call the implementation on the first failing
    one with each known argument order; the first order under which it passes is the likely cause."""
    from .execution import ProbeCase

    if report.adapter not in PROBED_ADAPTERS:
        return None
    by_id = {c.case_id: c for c in chosen}
    value = [r for r in report.results if r.case_id in by_id and "error" not in by_id[r.case_id].expected
             and r.status != "unsupported"]
    failing = [r for r in value if r.status in ("fail", "error", "xfail")]
    if not value or len(failing) < max(1, 0.8 * len(value)):
        return None
    case = by_id[failing[0].case_id]
    spec = FUNCTIONS[case.function]
    for name, order, advice in conventions_for(case.function):
        if sorted(order) != sorted(spec.inputs):
            continue
        probe = ProbeCase(**{f: getattr(case, f) for f in case.__dataclass_fields__}, call_order=order)
        if run_case(executor, probe, "", report.fields, provides, diagnose=False).status == "pass":
            native = ", ".join(spec.inputs)
            return {"name": name, "order": list(order), "case": case.case_id,
                    "advice": f"{advice}: with the inputs in that order it passes {case.case_id}; the "
                              f"{report.adapter} adapter calls fn({native}, config); reorder the parameters "
                              "(or wrap the function)"}
    return None


# --- the run ------------------------------------------------------------------------------


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


def reproduce_command(target: Target, case_id: str, profile: str, fields, isolate: bool) -> str:
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


def run_conformance(impl: Callable | str, function: str | None = None, adapter: str = "native",
                    backend: str = "auto", device: str = "cpu", include=(), exclude=(),
                    xfail: dict[str, str] | None = None, cases: list[GoldenCase] | None = None,
                    profile: str = "full", fields=None, properties: int = 0, timeout: float = 60.0,
                    isolate: bool = False) -> Report:
    """Run the golden cases of ``function`` (and ``properties`` hypothesis cases) against
    ``impl`` (a callable, or its ``package.module:callable`` path); returns a Report.

    ``isolate=True`` calls the implementation in a worker process with ``timeout`` seconds per
    case (``impl`` must then be importable by path). Raises SetupError on usage problems."""
    if profile not in PROFILES:
        raise SetupError(f"--profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    if fields is not None:
        fields = list(fields)
        known = {"loss", "grad", "metrics", "weight", "groups", "eps", "log_ratio", "ratio", "clipped_high",
                 "clipped_low"} | {s.output for s in FUNCTIONS.values() if s.output}
        unknown = [f for f in fields if f not in known]
        if unknown or not fields:
            raise SetupError(f"--fields: unknown output {unknown or fields!r}; known: {', '.join(sorted(known))}")
    if timeout is not None and not timeout > 0:
        raise SetupError(f"--timeout must be > 0 seconds, got {timeout}")
    fn = None
    if isinstance(impl, str):
        path = impl
    else:
        fn = impl
        path = import_path(impl)
        if path is None:
            if isolate:
                raise SetupError(f"--impl {impl!r} is not importable by path; pass isolate=False")
            path = f"{getattr(impl, '__module__', '?')}:{getattr(impl, '__qualname__', impl)}"
    if properties and properties < 0:
        raise SetupError(f"--property must be >= 0, got {properties}")
    if properties and importlib.util.find_spec("hypothesis") is None:
        raise SetupError("--property needs the hypothesis package: pip install 'espo-ref[test]'")
    target = Target(path, function, adapter, backend, device)
    report: Report | None = None
    executor = None
    try:
        executor = WorkerExecutor(target, timeout) if isolate else InProcessExecutor(target, fn)
        info = executor.info
        target = Target(path, info["function"], info["adapter"], info["backend"], device)
        report = Report(path, target.function, target.adapter, target.backend, device, profile, fields, isolate,
                        impl_version=info.get("impl_version"), property_examples=properties)
        if cases is None:
            try:
                cases = load()
            except (OSError, ValueError, KeyError) as exc:
                raise SetupError(f"golden data: {exc}") from exc
        chosen = select(cases, target.function, include, exclude, profile)
        xfail = xfail or {}
        known = read_xfail_file(info["known_differences"]) if info.get("known_differences") else {}
        for case in chosen:
            repro = reproduce_command(target, case.case_id, profile, fields, isolate)
            res = run_case(executor, case, repro, fields, info.get("provides"))
            _apply_known(res, known, info["known_differences"])
            _apply_xfail(res, xfail)
            report.results.append(res)
        report.calling_convention = probe_calling_convention(executor, report, chosen, info.get("provides"))
        if properties:
            from .properties import run_properties

            for res in run_properties(executor, target, properties, include, exclude, profile, fields,
                                      info.get("provides"), xfail):
                report.results.append(res)
        if not report.results:
            raise SetupError("no case matched the selection (--function, --profile, --include, --exclude)")
        return report
    except (KeyboardInterrupt, Terminated) as exc:
        signame = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        if report is None:
            report = Report(path, function or "?", adapter, backend, device, profile, fields, isolate)
        report.error = f"interrupted by {signame} after {len(report.results)} case(s); the worker was killed"
        raise RunInterrupted(report, signame) from None
    finally:
        if executor is not None:
            executor.close()


class Terminated(BaseException):
    """Raised by the command line's SIGTERM handler, so that the run ends through its finally blocks."""


class RunInterrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM; ``report`` holds what ran (not conformant)."""

    def __init__(self, report: Report, signame: str):
        super().__init__(report.error)
        self.report = report
        self.signame = signame


def _apply_known(res: CaseResult, known: dict[str, str], source: str) -> None:
    """A failure the adapter's peer is known for: name the [BASE-PEERS] row that explains it."""
    if res.status not in ("fail", "error"):
        return
    reason = next((r for p, r in known.items() if fnmatch.fnmatchcase(res.case_id, p)), None)
    if reason is not None:
        res.message = f"known difference of {source}: {reason} -- {res.message}"
        res.suspects = list(dict.fromkeys(["BASE-PEERS"] + res.suspects))


def _apply_xfail(res: CaseResult, xfail: dict[str, str]) -> None:
    reason = next((r for p, r in xfail.items() if fnmatch.fnmatchcase(res.case_id, p)), None)
    if reason is None:
        return
    res.status = "xpass" if res.status == "pass" else "xfail"
    res.message = (res.message + f" [xfail: {reason}]").strip()


# --- output -------------------------------------------------------------------------------


def format_report(report: Report, verbose: bool = False) -> str:
    lines = []
    for r in report.results:
        if r.status == "unsupported" and not verbose:
            continue  # summarised by option below
        if r.status in ("fail", "error", "xpass") or verbose:
            needs = f"  requires {','.join(r.requires)}" if r.requires else ""
            blamed = f"  suspects {','.join(r.suspects)}" if r.suspects and r.suspects != r.clauses else ""
            lines.append(f"{r.status.upper():5} {r.case_id}  clauses {','.join(r.clauses)}{blamed}{needs}")
            if r.message and r.status != "pass":
                body = r.message.strip().splitlines()
                lines.append(f"      {body[0]}")
                if verbose:
                    lines.extend(f"      {line}" for line in body[1:])
            if r.case is not None and r.status in ("fail", "error"):
                lines.append(f"      config {json.dumps(r.case['config'])}")
                lines.append(f"      inputs {json.dumps({k: v['data'] for k, v in r.case['inputs'].items()})}")
            if r.status in ("fail", "error"):
                lines.append(f"      reproduce: {r.reproduce}")
    counts = report.counts()
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in STATUSES if counts.get(k))
    lines.append(f"{report.function} [{report.adapter}/{report.backend}/{report.device}, profile {report.profile}] "
                 f"{report.impl}: {summary or 'no cases'}")
    missing = report.not_compared()
    if missing:
        why = "--fields" if report.fields is not None else f"the {report.adapter} adapter does not return them"
        metric_keys = [m for m in missing if m.startswith("metrics.")]
        shown = [m for m in missing if not m.startswith("metrics.")]
        if metric_keys:
            shown.append(f"{len(metric_keys)} metrics ({', '.join(k.split('.', 1)[1] for k in metric_keys[:4])}"
                         f"{', ...' if len(metric_keys) > 4 else ''})")
        lines.append(f"not compared: {', '.join(shown)} ({why})")
    if report.unsupported_options():
        lines.append("unsupported options (NotImplementedError): " + ", ".join(
            f"{o} ({n})" for o, n in report.unsupported_options().items())
            + "; --profile core selects the cases of the default options")
    if report.failing_clauses():
        lines.append("suspect clauses: " + ", ".join(f"{c} ({n})" for c, n in report.failing_clauses().items()))
    if report.calling_convention:
        lines.append(f"calling convention: {report.calling_convention['advice']}")
    if report.error:
        lines.append(f"run: {report.error}")
    if not report.isolated:
        lines.append("verdict not protected: --no-isolation ran the implementation in this process, where it can "
                     "read and change what it is compared against")
    if report.conformant:
        lines.append("CONFORMANT")
    elif report.error is None and not report.unexpected:
        lines.append("NOT CONFORMANT (no case passed: every case selected is expected to fail)")
    else:
        lines.append("NOT CONFORMANT")
    return "\n".join(lines)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _clean(obj):
    """Non-finite floats as strings (the report is strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_report(report: Report | None, path, extra: dict | None = None) -> None:
    payload = (report.to_json() if report is not None else {"spec_version": SPEC_VERSION}) | (extra or {})
    write_atomic(path, json.dumps(_clean(payload), indent=1, sort_keys=True, default=_json_default,
                                  allow_nan=False) + "\n")


def write_junit(report: Report | None, path, error: str | None = None) -> None:
    """JUnit XML: one testcase per case (classname = the function), failures and errors with
    their message, xfails as skipped."""
    import xml.etree.ElementTree as ET

    results = report.results if report is not None else []
    counts = report.counts() if report is not None else {}
    suite = ET.Element("testsuite", name=f"espo-ref conform {report.function if report else ''}".strip(),
                       tests=str(len(results) + (error is not None)),
                       failures=str(counts.get("fail", 0) + counts.get("xpass", 0) + counts.get("unsupported", 0)),
                       errors=str(counts.get("error", 0) + (error is not None)),
                       skipped=str(counts.get("xfail", 0)))
    for r in results:
        tc = ET.SubElement(suite, "testcase", classname=report.function, name=r.case_id)
        if r.status in ("fail", "xpass", "unsupported"):
            node = ET.SubElement(tc, "failure", message=r.message.splitlines()[0] if r.message else r.status)
            node.text = f"{r.message}\nclauses: {', '.join(r.suspects)}\nreproduce: {r.reproduce}"
        elif r.status == "error":
            node = ET.SubElement(tc, "error", message=r.message.splitlines()[0])
            node.text = r.message
        elif r.status == "xfail":
            ET.SubElement(tc, "skipped", message=r.message.splitlines()[0] if r.message else "xfail")
    if error is not None:
        tc = ET.SubElement(suite, "testcase", classname="espo-ref", name="setup")
        ET.SubElement(tc, "error", message=error)
    write_atomic(path, ET.tostring(suite, encoding="unicode") + "\n")


def check_output_path(path, option: str) -> None:
    """A report path must be a file in an existing folder (checked before the run)."""
    p = Path(path)
    if p.is_dir():
        raise SetupError(f"{option} {path}: is a folder; give a file name")
    if not p.parent.exists():
        raise SetupError(f"{option} {path}: folder {p.parent} does not exist")
    if not os.access(p.parent, os.W_OK):
        raise SetupError(f"{option} {path}: folder {p.parent} is not writable")
