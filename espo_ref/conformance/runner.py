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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import SPEC_VERSION
from .._io import write_atomic
from .compare import compare_field, required_fields
from .engines import unsupported_option
from .errors import SetupError
from .execution import InProcessExecutor, Target, WorkerExecutor, detect_backend, import_path, load_object
from .functions import FUNCTIONS
from .golden import GoldenCase, load
from .judge import CaseResult, float64_twin, reproduce_command, run_case
from .selection import PROFILES, in_profile, read_xfail_file, select, shipped_xfail_files

STATUSES = ("pass", "fail", "unsupported", "error", "xfail", "xpass")

__all__ = ["run_conformance", "format_report", "write_report", "write_junit", "read_xfail_file", "select",
           "load_impl", "detect_backend", "SetupError", "Report", "CaseResult", "PROFILES", "RunInterrupted",
           "Terminated", "run_case", "compare_field", "required_fields", "in_profile", "shipped_xfail_files",
           "reproduce_command", "float64_twin"]


def load_impl(spec: str) -> Callable:
    """``package.module:callable`` (dots after the colon walk attributes)."""
    return load_object(spec)


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
    golden_selected: int = 0  # golden cases of this function the selection kept
    golden_total: int = 0  # golden cases of every function

    @property
    def unexpected(self) -> list[CaseResult]:
        """Results that make a run not conformant; an option an engine's adapter declares it does
        not offer ([CONF-PEERS]) is reported, not counted against it."""
        return [r for r in self.results if r.status in ("fail", "unsupported", "error", "xpass")
                and not r.unsupported_option]

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
                for option in [r.unsupported_option] if r.unsupported_option else r.requires:
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
            "golden_cases": {"selected": self.golden_selected, "total": self.golden_total},
            "property_examples": self.property_examples,
            "conformant": self.conformant,
            "error": self.error,
            "counts": self.counts(),
            "failing_clauses": self.failing_clauses(),
            "unsupported_options": self.unsupported_options(),
            "not_compared": self.not_compared(),
            "cases": [r.to_json() for r in self.results],
        }


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
        report.golden_selected, report.golden_total = len(chosen), len(cases)
        xfail = xfail or {}
        known = read_xfail_file(info["known_differences"]) if info.get("known_differences") else {}
        for case in chosen:
            repro = reproduce_command(target, case.case_id, profile, fields, isolate)
            option = unsupported_option(target.adapter, case)  # decided here, never by the worker
            if option:
                report.results.append(CaseResult(case.case_id, case.clauses, "unsupported", requires=case.requires,
                                                 message=f"not offered by --adapter {target.adapter}: {option}",
                                                 unsupported_option=option))
                continue
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
    if report.golden_total:
        lines.append(f"golden cases run: {report.golden_selected} of the {report.golden_total}, those of "
                     f"{report.function} that --profile and --include/--exclude keep (--function picks another)")
    missing = report.not_compared()
    if missing:
        why = "--fields" if report.fields is not None else f"the {report.adapter} adapter does not return them"
        metric_keys = [m for m in missing if m.startswith("metrics.")]
        shown = [m for m in missing if not m.startswith("metrics.")]
        if metric_keys:
            shown.append(f"{len(metric_keys)} metrics ({', '.join(k.split('.', 1)[1] for k in metric_keys[:4])}"
                         f"{', ...' if len(metric_keys) > 4 else ''})")
        lines.append(f"not compared: {', '.join(shown)} ({why})")
    declared = {r.unsupported_option for r in report.results if r.unsupported_option}
    if declared:
        counts = report.unsupported_options()
        lines.append(f"not offered by the {report.adapter} adapter's engine (not run): " + ", ".join(
            f"{o} ({counts[o]})" for o in sorted(declared)))
    raised = {o: n for o, n in report.unsupported_options().items() if o not in declared}
    if raised:
        lines.append("unsupported options (NotImplementedError): " + ", ".join(
            f"{o} ({n})" for o, n in raised.items()) + "; --profile core selects the cases of the default options")
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
