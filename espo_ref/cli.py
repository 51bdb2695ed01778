"""[CONF-EXIT] The ``espo-ref`` command line."""

from __future__ import annotations

import argparse
import sys

from ._argtypes import boolean, one_line_errors


def _conform(args: argparse.Namespace) -> int:
    """[CONF-EXIT] Exit 0 conformant, 1 not conformant (a failure, an error of a case, an xpass, no
    case passed), 2 a usage or setup error (one line on stderr; -v adds the traceback), 128 + N
    when signal N (SIGINT, SIGTERM) stopped the run. The JSON report and the JUnit file are
    written on every one of these paths."""
    import signal

    from .conformance.runner import (RunInterrupted, SetupError, Terminated, check_output_path, format_report,
                                     read_xfail_file, run_conformance, write_junit, write_report)

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    report = None
    try:
        for option in ("report", "junit"):
            if getattr(args, option):
                check_output_path(getattr(args, option), f"--{option}")
        if args.dump:
            return _dump(args)
        if not args.impl:
            raise SetupError("--impl is required (package.module:callable), unless --dump is given")
        if args.property < 0:
            raise SetupError(f"--property must be >= 0, got {args.property}")
        fields = None
        if args.fields:
            fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        xfail = read_xfail_file(args.xfail_file) if args.xfail_file else {}
        report = run_conformance(args.impl, function=args.function, adapter=args.adapter, backend=args.backend,
                                 device=args.device, include=args.include, exclude=args.exclude, xfail=xfail,
                                 profile=args.profile, fields=fields, properties=args.property,
                                 timeout=args.timeout, isolate=not args.no_isolation)
    except SetupError as exc:
        return _conform_stopped(args, f"{exc}", 2)
    except RunInterrupted as exc:
        print(format_report(exc.report, verbose=args.verbose))
        _write_conform_files(args, exc.report, None)
        return 128 + (signal.SIGTERM if exc.signame == "SIGTERM" else signal.SIGINT)
    except (KeyboardInterrupt, Terminated) as exc:  # before the run started
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        _conform_stopped(args, f"interrupted by {signal.Signals(signum).name}", None)
        return 128 + signum
    except Exception as exc:  # noqa: BLE001 - our own bug: one line, the files still written
        _conform_stopped(args, f"internal error: {type(exc).__name__}: {exc}", None)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_report(report, verbose=args.verbose))
    _write_conform_files(args, report, None)
    if args.report:
        print(f"report written to {args.report}")
    return 0 if report.conformant else 1


def _conform_stopped(args: argparse.Namespace, message: str, code):
    """A run that produced no report: the one-line message, then the report and JUnit files saying so."""
    print(f"espo-ref conform: {message}", file=sys.stderr)
    if args.verbose:
        import traceback

        traceback.print_exc()
    _write_conform_files(args, None, message)
    return code


def _write_conform_files(args: argparse.Namespace, report, error: str | None) -> None:
    """--report and --junit, whatever happened; a path that cannot be written is said on stderr once."""
    from .conformance.runner import SetupError, check_output_path, write_junit, write_report

    writers = {
        "report": lambda path: write_report(report, path, None if report is not None else
                                            {"error": error, "conformant": False, "counts": {}, "cases": []}),
        "junit": lambda path: write_junit(report, path, error=error if report is None else report.error),
    }
    for option, write in writers.items():
        path = getattr(args, option, None)
        if not path:
            continue
        try:
            check_output_path(path, f"--{option}")
            write(path)
        except (SetupError, OSError) as exc:
            if error is None or f"--{option}" not in error:  # else the one line said it already
                print(f"espo-ref conform: --{option} {path}: not written ({exc})", file=sys.stderr)


def _dump(args: argparse.Namespace) -> int:
    """Write one case (inputs, config, expected outputs) as JSON and .npz for a debugger."""
    import json
    from pathlib import Path

    import numpy as np

    from ._files import REPORT_BYTES, FileError, read_json_object
    from ._io import write_atomic
    from .conformance.golden import GoldenCase, load
    from .conformance.runner import SetupError

    if not args.to:
        raise SetupError("--dump needs --to DIR (the folder to write the case into)")
    if args.dump_from:
        try:
            data = read_json_object(args.dump_from, max_bytes=REPORT_BYTES, what="a conformance report")
        except FileError as exc:
            raise SetupError(f"--from {exc}") from None
        try:
            found = [GoldenCase.from_json(r["case"]) for r in data.get("cases", [])
                     if r.get("case_id") == args.dump and "case" in r]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SetupError(f"--from {args.dump_from}: not a conformance report with that case ({exc})") from None
    else:
        found = [c for c in load() if c.case_id == args.dump]
    if not found:
        where = f"report {args.dump_from}" if args.dump_from else "the golden cases"
        raise SetupError(f"--dump {args.dump}: no such case in {where} (property failures: add --from REPORT)")
    case = found[0]
    folder = Path(args.to)
    if folder.exists() and not folder.is_dir():
        raise SetupError(f"--to {args.to}: exists and is not a folder")
    stem = case.case_id.replace("/", "__")
    paths = [folder / f"{stem}.json", folder / f"{stem}.npz"]
    taken = [str(p) for p in paths if p.exists()]
    if taken and not args.force:
        raise SetupError(f"--to {args.to}: {', '.join(taken)} already exist(s); pass --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    obj = case.to_json()
    write_atomic(paths[0], json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")
    arrays = {f"inputs.{k}": v for k, v in case.inputs.items()}
    for k, v in case.expected.items():
        if isinstance(v, dict):
            arrays.update({f"expected.{k}.{m}": np.float64(x) for m, x in v.items()})
        elif isinstance(v, str):
            arrays[f"expected.{k}"] = np.str_(v)
        else:
            arrays[f"expected.{k}"] = np.asarray(v)
    arrays["config_json"] = np.str_(json.dumps(case.config))
    arrays["kwargs_json"] = np.str_(json.dumps(case.kwargs))
    tmp = paths[1].with_name(f".{paths[1].name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(paths[1])
    print(f"wrote {paths[0]} and {paths[1]} (load with np.load(path, allow_pickle=False))")
    return 0


def _silence_stdout() -> None:
    """After a BrokenPipeError (espo-ref ... | head): stdout goes nowhere, so that the flush at
    exit does not raise again."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _clamp(text: str):
    """A float, or the string "none" (no clamp; None itself means the flag was not given)."""
    return "none" if text.lower() == "none" else float(text)


def _floats(text: str) -> tuple:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


# (flag, ESPOConfig field, type) for explain: every option of ESPOConfig, as in espo-ref train
EXPLAIN_OPTIONS = [
    ("--vocab-size", "vocab_size", int), ("--alpha", "alpha", float), ("--top-fraction", "top_fraction", float),
    ("--grouping", "grouping", str), ("--entropy-edges", "entropy_edges", _floats),
    ("--drop-low-group", "drop_low_group", boolean), ("--clip", "clip", str), ("--eps-low", "eps_low", float),
    ("--eps-high", "eps_high", float), ("--eps-reading", "eps_reading", str), ("--ratio-form", "ratio_form", str),
    ("--log-ratio-clamp", "log_ratio_clamp", _clamp), ("--entropy-tolerance", "entropy_tolerance", float),
]


def _explain(args: argparse.Namespace) -> int:
    """[CONF-EXIT] Exit 0 (with --impl: the implementation agrees), 1 the implementation differs,
    2 a usage or input error (one line on stderr; -v adds the traceback)."""
    from pathlib import Path

    from ._io import write_atomic
    from .conformance.runner import SetupError
    from .errors import ESPOInputError
    from .explain import compare, espo_config_of, load_batch, token_view
    from .explain.html import explain_page
    from .explain.text import render

    try:
        html_path = Path(args.html) if args.html else Path(args.batch).with_suffix(".explain.html")
        if html_path.is_dir():
            raise SetupError(f"--html {html_path}: is a folder; give the page's file name")
        if html_path.exists() and not args.force:
            raise SetupError(f"--html {html_path}: exists; pass --force to overwrite it (or --html PATH)")
        if not html_path.parent.is_dir():
            raise SetupError(f"--html {html_path}: folder {html_path.parent} does not exist")
        if args.rows < 0:
            raise SetupError(f"--rows must be >= 0, got {args.rows}")
        batch = load_batch(args.batch)
        overrides = {field: getattr(args, field) for _, field, _ in EXPLAIN_OPTIONS
                     if getattr(args, field) is not None}
        if overrides.get("log_ratio_clamp") == "none":
            overrides["log_ratio_clamp"] = None
        view = token_view(batch, espo_config_of(batch, overrides))
        comparison = None
        if args.impl:
            comparison = compare(view, args.impl, adapter=args.adapter, backend=args.backend, device=args.device,
                                 timeout=args.timeout, isolate=not args.no_isolation)
    except (SetupError, ESPOInputError) as exc:
        print(f"espo-ref explain: {exc}", file=sys.stderr)
        if args.verbose:
            import traceback

            traceback.print_exc()
        return 2
    try:
        write_atomic(html_path, explain_page(view, comparison))  # before printing: a closed pipe must not lose it
    except OSError as exc:
        print(f"espo-ref explain: --html {html_path}: cannot write it: {exc.strerror or exc}", file=sys.stderr)
        return 2
    code = 1 if comparison is not None and comparison.status != "pass" else 0
    try:
        print(render(view, comparison, rows=args.rows))
        print(f"\npage written to {html_path}")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: the verdict still decides the status
        _silence_stdout()
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="espo-ref", description="The ESPO reference implementation.")
    sub = parser.add_subparsers(dest="command", required=True)
    one_line_errors(parser, "")  # a mistyped sub-command: one line too

    conform = sub.add_parser("conform", help="validate an implementation against the golden vectors",
                             description="Exit status: 0 conformant, 1 not conformant, 2 usage or setup error. "
                                         "specs/conformance.md describes levels, tolerances and adapters.")
    conform.add_argument("--impl", default=None, help="package.module:callable under test")
    conform.add_argument("--function", default=None,
                         help="which reference function it implements (default: the callable's name, else espo_loss)")
    conform.add_argument("--adapter", default="native",
                         help="native, torch-loss, verl, verl-advantage, an adapter the implementation's module "
                              "registers, or package.module:AdapterClass")
    conform.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"],
                         help="array type passed in; auto: torch when the implementation's module imports torch")
    conform.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    conform.add_argument("--profile", default="full", choices=["core", "full"],
                         help="core: the cases of the default options only; full: every case (default)")
    conform.add_argument("--include", action="append", default=[], help="glob on case id or clause id (repeatable)")
    conform.add_argument("--exclude", action="append", default=[], help="glob on case id or clause id (repeatable)")
    conform.add_argument("--xfail-file", default=None,
                         help="file of case-id globs expected to fail, '# reason' after; or a shipped file's "
                              "name (verl-0.9.1)")
    conform.add_argument("--fields", default=None,
                         help="compare only these outputs (comma-separated, e.g. loss); loss cases compare loss "
                              "and grad and every field the adapter provides unless narrowed")
    conform.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                         help="limit for importing the implementation and for each case; a case that takes "
                              "longer is an error (default 60)")
    conform.add_argument("--no-isolation", action="store_true",
                         help="for debugging: call the implementation in this process. Its verdict is NOT "
                              "protected (the implementation can read and patch what it is compared against); "
                              "no timeout, no protection from sys.exit")
    conform.add_argument("--report", default=None, help="write a JSON report here (also on errors)")
    conform.add_argument("--junit", default=None, help="write JUnit XML here")
    conform.add_argument("--property", type=int, default=0, metavar="N",
                         help="also run N hypothesis-generated cases against the numpy reference")
    conform.add_argument("--dump", default=None, metavar="CASE_ID",
                         help="write this case's inputs, config and expected outputs (JSON and .npz) to --to")
    conform.add_argument("--to", default=None, metavar="DIR", help="folder for --dump")
    conform.add_argument("--from", dest="dump_from", default=None, metavar="REPORT",
                         help="with --dump: take a failing property case from this JSON report")
    conform.add_argument("--force", action="store_true", help="with --dump: overwrite existing files")
    conform.add_argument("-v", "--verbose", action="store_true", help="list passing cases too; tracebacks")
    conform.set_defaults(handler=_conform)
    one_line_errors(conform, "conform")

    explain = sub.add_parser(
        "explain", help="what ESPO does to each token of a batch (and where an implementation differs)",
        description="Exit status: 0 done (with --impl: it agrees with the reference), 1 --impl differs, "
                    "2 usage or input error. BATCH: a .npz or .json with the inputs of espo_loss, as "
                    "espo-ref conform --dump or a training run's batches/ write them.")
    explain.add_argument("batch", metavar="BATCH", help="batch file (.npz or .json)")
    explain.add_argument("--impl", default=None, help="package.module:callable to compare with the reference")
    explain.add_argument("--adapter", default="native", help="how to call --impl (as in espo-ref conform)")
    explain.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"])
    explain.add_argument("--device", default="cpu", help="torch device for --impl")
    explain.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                         help="limit for importing --impl and for its call (default 60)")
    explain.add_argument("--no-isolation", action="store_true",
                         help="for debugging: call --impl in this process; its verdict is then NOT protected")
    explain.add_argument("--html", default=None, help="page to write (default: BATCH with .explain.html)")
    explain.add_argument("--force", action="store_true", help="overwrite an existing page")
    explain.add_argument("--rows", type=int, default=40, help="token rows in the terminal table (default 40)")
    explain.add_argument("-v", "--verbose", action="store_true", help="tracebacks with the error messages")
    for flag, field, kind in EXPLAIN_OPTIONS:
        explain.add_argument(flag, dest=field, type=kind, default=None,
                             help=f"ESPOConfig.{field} (default: the batch's config, else ESPOConfig's)")
    explain.set_defaults(handler=_explain)
    one_line_errors(explain, "explain")

    from .train.cli import add_parsers as add_train_parsers

    add_train_parsers(sub)

    args, extra = parser.parse_known_args(argv)
    if extra:  # what parse_args does, but in the sub-command's one line
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader went away: nothing more to say
        _silence_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
