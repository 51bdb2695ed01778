"""The conformance runner: golden cases (and optional property cases) against an implementation.

Each case passes when every output the adapter returns agrees with the expected value
within the case's tolerance (|got - want| <= atol + rtol |want|; exact for integer and
boolean outputs). A failure names the case, its clauses, the clauses its first wrong
output points at, max abs / rel error, how many elements were bad, and a command that
reproduces it.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import math
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import SPEC_VERSION
from .._io import write_atomic
from ..tolerances import Tolerance, compare
from .adapters import ADAPTERS
from .functions import FIELD_ORDER, FUNCTIONS, suspects
from .golden import GoldenCase, load


@dataclass
class CaseResult:
    case_id: str
    clauses: list[str]
    status: str  # "pass", "fail", "xfail", "xpass", "error"
    fields: dict[str, dict] = field(default_factory=dict)
    suspects: list[str] = field(default_factory=list)
    message: str = ""
    reproduce: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], {})} | {"status": self.status}


@dataclass
class Report:
    impl: str
    function: str
    adapter: str
    backend: str
    device: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def unexpected(self) -> list[CaseResult]:
        return [r for r in self.results if r.status in ("fail", "error", "xpass")]

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

    def to_json(self) -> dict:
        return {
            "spec_version": SPEC_VERSION,
            "impl": self.impl,
            "impl_version": _impl_version(self.impl),
            "function": self.function,
            "adapter": self.adapter,
            "backend": self.backend,
            "device": self.device,
            "counts": self.counts(),
            "failing_clauses": self.failing_clauses(),
            "cases": [r.to_json() for r in self.results],
        }


def _impl_version(impl: str) -> str | None:
    module = impl.split(":", 1)[0]
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(module.split(".")[0].replace("_", "-"))
        except PackageNotFoundError:
            return getattr(sys.modules.get(module.split(".")[0]), "__version__", None)
    except Exception:  # noqa: BLE001 - a version is informative only
        return None


def load_impl(spec: str) -> Callable:
    """``package.module:callable`` (dots after the colon walk attributes)."""
    if ":" not in spec:
        raise ValueError(f"--impl must look like package.module:callable, got {spec!r}")
    module_name, attr = spec.split(":", 1)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--impl {spec!r} is not callable")
    return obj


def detect_backend(fn: Callable) -> str:
    """"torch" when the implementation's module imports torch, else "numpy"."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    names = vars(module).values() if module is not None else ()
    return "torch" if any(getattr(v, "__name__", None) == "torch" for v in names) else "numpy"


def read_xfail_file(path) -> dict[str, str]:
    """Lines ``PATTERN  # reason``; blank lines and lines starting with # are ignored."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern, _, reason = line.partition("#")
            out[pattern.strip()] = reason.strip() or "listed in the xfail file"
    return out


def _matches(case: GoldenCase, patterns) -> bool:
    return any(fnmatch.fnmatchcase(case.case_id, p) or any(fnmatch.fnmatchcase(c, p) for c in case.clauses)
               for p in patterns)


def select(cases: list[GoldenCase], function: str, include=(), exclude=()) -> list[GoldenCase]:
    chosen = [c for c in cases if c.function == function]
    if include:
        chosen = [c for c in chosen if _matches(c, include)]
    if exclude:
        chosen = [c for c in chosen if not _matches(c, exclude)]
    return chosen


def _tol(case: GoldenCase, kind: str) -> Tolerance:
    t = case.tolerance()[kind]
    return Tolerance(t["rtol"], t["atol"], "case tolerance")


def compare_outputs(case: GoldenCase, got: dict[str, Any]) -> dict[str, dict]:
    """Per-field comparison reports for every expected field the implementation returned."""
    reports: dict[str, dict] = {}
    for name, want in case.expected.items():
        if name == "error" or name not in got:
            continue
        value = got[name]
        if name == "metrics":
            keys = [k for k in want if k in value]
            if keys:
                reports[name] = compare([value[k] for k in keys], [want[k] for k in keys], _tol(case, "value"))
                reports[name]["keys"] = keys
            continue
        want_arr = np.asarray(want)
        got_arr = np.asarray(value)
        if want_arr.dtype.kind in "biu":
            if got_arr.shape != want_arr.shape:
                reports[name] = {"ok": False, "reason": f"shape {got_arr.shape} != {want_arr.shape}"}
                continue
            bad = got_arr.astype(np.int64) != want_arr.astype(np.int64)
            rep = {"ok": not bad.any(), "bad": int(bad.sum()), "n": int(bad.size)}
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                rep["first_bad"] = {"index": list(idx), "got": int(got_arr[idx]), "want": int(want_arr[idx])}
            reports[name] = rep
        else:
            reports[name] = compare(got_arr, want_arr, _tol(case, "grad" if name == "grad" else "value"))
    return reports


def run_case(adapter, case: GoldenCase, reproduce: str) -> CaseResult:
    result = CaseResult(case.case_id, case.clauses, "pass", reproduce=reproduce)
    if "error" in case.expected:
        try:
            adapter.run(case)
        except Exception as exc:  # noqa: BLE001 - any error is the expected outcome
            result.message = f"raised {type(exc).__name__}: {exc}"
            return result
        result.status = "fail"
        result.suspects = list(case.clauses)
        result.message = f"expected an error naming {case.expected['error']!r}; nothing was raised"
        return result
    try:
        got = adapter.run(case)
    except Exception as exc:  # noqa: BLE001 - reported per case
        result.status = "error"
        result.suspects = list(case.clauses)
        result.message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        return result
    result.fields = compare_outputs(case, got)
    if not result.fields:
        result.status = "error"
        result.message = "the implementation returned none of the expected outputs"
        return result
    failed = [name for name, rep in result.fields.items() if not rep["ok"]]
    if failed:
        result.status = "fail"
        result.suspects = suspects(failed, case.clauses)
        ordered = sorted(failed, key=lambda n: FIELD_ORDER.index(n) if n in FIELD_ORDER else len(FIELD_ORDER))
        parts = []
        for name in ordered:
            rep = result.fields[name]
            parts.append(f"{name}: {rep.get('bad')} of {rep.get('n')} bad, max abs {rep.get('max_abs', 'n/a')}, "
                         f"max rel {rep.get('max_rel', 'n/a')}, first {rep.get('first_bad', rep.get('reason'))}")
        result.message = "; ".join(parts)
    return result


def run_conformance(impl: Callable | str, function: str | None = None, adapter: str = "native",
                    backend: str = "auto", device: str = "cpu", include=(), exclude=(),
                    xfail: dict[str, str] | None = None, cases: list[GoldenCase] | None = None) -> Report:
    """Run the golden cases of ``function`` against ``impl``; returns a Report."""
    impl_name = impl if isinstance(impl, str) else f"{getattr(impl, '__module__', '?')}:{getattr(impl, '__qualname__', impl)}"
    fn = load_impl(impl) if isinstance(impl, str) else impl
    if function is None:
        function = getattr(fn, "__name__", "espo_loss")
        if function not in FUNCTIONS:
            function = "espo_loss"
    if function not in FUNCTIONS:
        raise ValueError(f"--function must be one of {sorted(FUNCTIONS)}, got {function!r}")
    if ":" in adapter:  # package.module:AdapterClass, defined outside this package
        adapter_class = load_impl(adapter)
    elif adapter in ADAPTERS:  # built in, or registered by the implementation's module on import
        adapter_class = ADAPTERS[adapter]
    else:
        raise ValueError(f"--adapter must be one of {sorted(ADAPTERS)} or package.module:Class, got {adapter!r}")
    if backend == "auto":
        backend = "torch" if adapter in ("torch-loss", "verl") else detect_backend(fn)
    runner = adapter_class(fn, function, backend, device)
    report = Report(impl_name, function, adapter, backend, device)
    xfail = xfail or {}
    for case in select(cases if cases is not None else load(), function, include, exclude):
        repro = (f"espo-ref conform --impl {impl_name} --function {function} --adapter {adapter} "
                 f"--backend {backend} --device {device} --include '{case.case_id}'")
        res = run_case(runner, case, repro)
        reason = next((r for p, r in xfail.items() if fnmatch.fnmatchcase(case.case_id, p)), None)
        if reason is not None:
            res.status = "xpass" if res.status == "pass" else "xfail"
            res.message = (res.message + f" [xfail: {reason}]").strip()
        report.results.append(res)
    return report


def format_report(report: Report, verbose: bool = False) -> str:
    lines = []
    for r in report.results:
        if r.status in ("fail", "error", "xpass") or verbose:
            lines.append(f"{r.status.upper():5} {r.case_id}  clauses {','.join(r.suspects or r.clauses)}")
            if r.message and r.status != "pass":
                lines.append(f"      {r.message.strip().splitlines()[0]}")
            if r.status in ("fail", "error"):
                lines.append(f"      reproduce: {r.reproduce}")
    counts = report.counts()
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("pass", "fail", "error", "xfail", "xpass") if counts.get(k))
    lines.append(f"{report.function} [{report.adapter}/{report.backend}/{report.device}] {report.impl}: "
                 f"{summary or 'no cases'}")
    if report.failing_clauses():
        lines.append("failing clauses: " + ", ".join(f"{c} ({n})" for c, n in report.failing_clauses().items()))
    return "\n".join(lines)


def write_report(report: Report, path, extra: dict | None = None) -> None:
    payload = report.to_json() | (extra or {})
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
