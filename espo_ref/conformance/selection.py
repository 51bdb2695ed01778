"""[CONF-LEVELS] Which cases a run selects: the profile, include / exclude globs, and the xfail files."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from .._files import TEXT_BYTES, FileError, read_text
from .errors import SetupError
from .golden import GoldenCase

PROFILES = ("core", "full")
XFAIL_DIR = Path(__file__).resolve().parent / "engines"  # the expected-failure files beside their engines


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
        text = read_text(p, TEXT_BYTES, "an xfail file")  # [CONF-FILES]: its size bounded
    except FileError as exc:
        raise SetupError(f"--xfail-file {exc}") from None
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
