"""Argument types the command lines share (argparse ``type=``), and reading a JSON object file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def read_json_object(path) -> dict:
    """The JSON object in a file; ValueError (saying why, without the path) otherwise."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"not readable as JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value
