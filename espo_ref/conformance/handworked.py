"""Parser of the hand-worked cases written in specs/*.md (section "Hand-worked cases").

A case is a ``#### HW-xxx: title`` heading followed by ``clauses:``, ``function:``,
optional ``config:`` and ``shape:`` lines, one markdown table and ``expect:`` lines.
Cells are arithmetic expressions evaluated by a small whitelist evaluator (no eval).
The expected values come from the spec text, never from the code under test.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPEC_DIR = Path(__file__).resolve().parent.parent.parent / "specs"

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"ln": math.log, "log": math.log, "exp": math.exp, "sqrt": math.sqrt}
_NAMES = {"inf": math.inf, "nan": math.nan, "pi": math.pi, "True": True, "False": False, "None": None}


def evaluate(text: str) -> Any:
    """Evaluate a cell: numbers, + - * / **, ln/exp/sqrt, inf/nan, lists. Else a bare word."""
    text = text.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return text

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        if isinstance(node, ast.Name) and node.id in _NAMES:
            return _NAMES[node.id]
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        raise ValueError(f"not allowed in a hand-worked cell: {ast.dump(node)}")

    try:
        return ev(tree)
    except ValueError:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", text):
            return text
        raise


@dataclass
class Case:
    case_id: str
    title: str
    source: str
    clauses: list[str] = field(default_factory=list)
    function: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, int] | None = None
    header: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    expects: list[tuple[str, str, str]] = field(default_factory=list)  # (name, op, expr)


def _split_config(text: str) -> dict[str, Any]:
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        out.append(current)
    config = {}
    for item in out:
        name, _, value = item.partition("=")
        config[name.strip()] = evaluate(value)
    return config


def load_cases(paths=None) -> list[Case]:
    paths = sorted(SPEC_DIR.glob("*.md")) if paths is None else paths
    cases: list[Case] = []
    for path in paths:
        case = None
        for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
            m = re.match(r"^#### (HW-[A-Za-z0-9\-]+): (.*)$", line)
            if m:
                case = Case(m.group(1), m.group(2).strip(), f"{Path(path).name}:{lineno}")
                cases.append(case)
                continue
            if case is None:
                continue
            if line.startswith("#"):
                case = None
                continue
            if line.startswith("clauses:"):
                case.clauses = [c.strip() for c in line.split(":", 1)[1].split(",") if c.strip()]
            elif line.startswith("function:"):
                case.function = line.split(":", 1)[1].strip()
            elif line.startswith("config:"):
                case.config = _split_config(line.split(":", 1)[1])
            elif line.startswith("shape:"):
                b, t = line.split(":", 1)[1].strip().split("x")
                case.shape = (int(b), int(t))
            elif line.startswith("expect:"):
                m = re.match(r"^expect:\s*([\w.]+)\s*(=|~)\s*(.+)$", line)
                if not m:
                    raise ValueError(f"{path}:{lineno}: bad expect line {line!r}")
                case.expects.append((m.group(1), m.group(2), m.group(3).strip()))
            elif line.startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if not case.header:
                    case.header = cells
                elif all(set(c) <= set("-: ") for c in cells):
                    continue
                else:
                    if len(cells) != len(case.header):
                        raise ValueError(f"{path}:{lineno}: row has {len(cells)} cells, header {len(case.header)}")
                    case.rows.append(dict(zip(case.header, cells)))
    return cases


TOKEN_INPUTS = ("logp", "old_logp", "entropy", "adv", "mask")
TOKEN_OUTPUTS = ("groups", "eps", "log_ratio", "ratio", "grad", "weight", "clipped")


def token_arrays(case: Case, names) -> tuple[dict[str, np.ndarray], np.ndarray, list]:
    """[B, T] arrays of the given columns; positions not in the table are padding."""
    keys = [(int(evaluate(r["b"])), int(evaluate(r["t"]))) for r in case.rows]
    B = max(b for b, _ in keys) + 1
    T = max(t for _, t in keys) + 1
    if case.shape is not None:
        B, T = max(B, case.shape[0]), max(T, case.shape[1])
    mask = np.zeros((B, T), dtype=bool)
    arrays = {n: np.zeros((B, T)) for n in names if n in case.header}
    for (b, t), row in zip(keys, case.rows):
        mask[b, t] = bool(evaluate(row["mask"])) if "mask" in row else True
        for n in arrays:
            arrays[n][b, t] = evaluate(row[n])
    return arrays, mask, keys
