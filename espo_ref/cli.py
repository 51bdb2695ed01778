"""The ``espo-ref`` command line."""

from __future__ import annotations

import argparse
import sys


def _conform(args: argparse.Namespace) -> int:
    from .conformance.adapters import ADAPTERS
    from .conformance.runner import format_report, load_impl, read_xfail_file, run_conformance, write_report

    if args.property:
        from .conformance.properties import PROPERTY_FUNCTIONS

        function = args.function or args.impl.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        if function not in PROPERTY_FUNCTIONS:
            print(f"--property supports the losses {PROPERTY_FUNCTIONS}; use --function to name one", file=sys.stderr)
            return 2
    xfail = read_xfail_file(args.xfail_file) if args.xfail_file else {}
    report = run_conformance(args.impl, function=args.function, adapter=args.adapter, backend=args.backend,
                             device=args.device, include=args.include, exclude=args.exclude, xfail=xfail)
    print(format_report(report, verbose=args.verbose))
    extra = {}
    if args.property:
        from .conformance.properties import run_properties

        adapter_class = load_impl(args.adapter) if ":" in args.adapter else ADAPTERS[args.adapter]
        adapter = adapter_class(load_impl(args.impl), report.function, report.backend, args.device)
        failures = run_properties(adapter, report.function, args.property)
        extra["property"] = {"examples": args.property, "failures": [f.to_json() for f in failures]}
        status = "FAIL" if failures else "pass"
        print(f"property: {args.property} hypothesis cases: {status}")
        for f in failures:
            print(f"      {f.message}")
    if args.report:
        write_report(report, args.report, extra)
        print(f"report written to {args.report}")
    failed = bool(report.unexpected) or bool(extra.get("property", {}).get("failures"))
    if not report.results and not args.property:
        print("no golden case matched the selection", file=sys.stderr)
        return 2
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="espo-ref", description="The ESPO reference implementation.")
    sub = parser.add_subparsers(dest="command", required=True)

    conform = sub.add_parser("conform", help="validate an implementation against the golden vectors")
    conform.add_argument("--impl", required=True, help="package.module:callable under test")
    conform.add_argument("--function", default=None,
                         help="which reference function it implements (default: the callable's name, else espo_loss)")
    conform.add_argument("--adapter", default="native",
                         help="native, torch-loss, verl, an adapter the implementation's module registers, "
                              "or package.module:AdapterClass")
    conform.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"],
                         help="array type passed in; auto: torch when the implementation's module imports torch")
    conform.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    conform.add_argument("--include", action="append", default=[], help="glob on case id or clause id (repeatable)")
    conform.add_argument("--exclude", action="append", default=[], help="glob on case id or clause id (repeatable)")
    conform.add_argument("--xfail-file", default=None, help="file of case-id globs expected to fail, '# reason' after")
    conform.add_argument("--report", default=None, help="write a JSON report here")
    conform.add_argument("--property", type=int, default=0, metavar="N",
                         help="also run N hypothesis-generated cases against the numpy reference")
    conform.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    conform.set_defaults(handler=_conform)

    from .train.cli import add_parsers as add_train_parsers

    add_train_parsers(sub)

    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
