"""Argument types the command lines share (argparse ``type=``); files are read by espo_ref._files."""

from __future__ import annotations

import argparse
import sys


def one_line_errors(parser: argparse.ArgumentParser, command: str) -> None:
    """[CONF-EXIT] A usage error of this sub-command (``command=""``: of espo-ref itself, a mistyped
    sub-command): one line on stderr, exit 2 (not the whole usage)."""

    prog = f"espo-ref {command}".strip()

    def error(message: str):
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error


def boolean(text: str) -> bool:
    """true/false, yes/no, 1/0 (any case)."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")

