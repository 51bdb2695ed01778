"""Parser and runner for the hand-worked cases written in specs/*.md (section "Hand-worked cases").

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
from typing import Any, Callable

import numpy as np

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"

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


# --- running a case --------------------------------------------------------------------

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


def expected_tokens(case: Case, keys) -> dict[str, list[tuple[tuple[int, int], Any]]]:
    out: dict[str, list] = {}
    for n in TOKEN_OUTPUTS:
        if n in case.header:
            out[n] = [(k, row[n] if n == "clipped" else evaluate(row[n])) for k, row in zip(keys, case.rows)]
    return out


class Outcome:
    """What a function returned for a case, in a form the checks read."""

    def __init__(self, scalars: dict[str, float], tokens: dict[str, np.ndarray] | None = None,
                 vector: np.ndarray | None = None):
        self.scalars = scalars
        self.tokens = tokens or {}
        self.vector = vector


def run_token_loss(fn: Callable, config_factory: Callable, with_entropy: bool):
    def runner(case: Case) -> tuple[Outcome, dict]:
        arrays, mask, keys = token_arrays(case, TOKEN_INPUTS)
        config = config_factory(**case.config)
        args = [arrays["logp"], arrays["old_logp"]]
        if with_entropy:
            args.append(arrays["entropy"])
        result = fn(*args, mask, arrays["adv"], config)
        scalars = {"loss": result.loss, **{f"metrics.{k}": v for k, v in result.metrics.items()}}
        clipped = np.full(mask.shape, "-", dtype=object)
        clipped[np.asarray(result.clipped_high)] = "H"
        clipped[np.asarray(result.clipped_low)] = "L"
        tokens = {"grad": result.grad, "ratio": result.ratio, "clipped": clipped}
        for name, attr in (("groups", "groups"), ("eps", "eps"), ("log_ratio", "log_ratio"), ("weight", "weight")):
            if getattr(result, attr, None) is not None:
                tokens[name] = getattr(result, attr)
        return Outcome(scalars, tokens), {"keys": keys}
    return runner


def _run_entropy_groups(case: Case):
    import espo_ref

    arrays, mask, keys = token_arrays(case, ("entropy",))
    groups = espo_ref.entropy_groups(arrays["entropy"], mask, espo_ref.ESPOConfig(**case.config))
    return Outcome({}, {"groups": groups}), {"keys": keys}


def _run_token_entropy(case: Case):
    import espo_ref

    got = [float(espo_ref.token_entropy(np.array(evaluate(r["logits"]), dtype=float),
                                        temperature=evaluate(r.get("temperature", "1"))))
           for r in case.rows]
    return Outcome({}, vector=np.array(got)), {"column": "entropy"}


def _run_high_group_size(case: Case):
    import espo_ref

    got = [int(espo_ref.high_group_size(np.array([int(evaluate(r["length"]))]), evaluate(r["top_fraction"]))[0])
           for r in case.rows]
    return Outcome({}, vector=np.array(got, dtype=float)), {"column": "n_high"}


def _run_grpo_advantages(case: Case):
    import espo_ref

    rewards = np.array([evaluate(r["reward"]) for r in case.rows], dtype=float)
    prompts = np.array([int(evaluate(r["prompt"])) for r in case.rows])
    valid = np.array([bool(evaluate(r.get("valid", "1"))) for r in case.rows])
    adv = espo_ref.grpo_advantages(rewards, prompts, valid, **case.config)
    return Outcome({}, vector=adv), {"column": "adv"}


def _espo_runner(case):
    import espo_ref

    return run_token_loss(espo_ref.espo_loss, espo_ref.ESPOConfig, with_entropy=True)(case)


RUNNERS: dict[str, Callable] = {
    "espo_loss": _espo_runner,
    "entropy_groups": _run_entropy_groups,
    "token_entropy": _run_token_entropy,
    "high_group_size": _run_high_group_size,
    "grpo_advantages": _run_grpo_advantages,
}


def check_case(case: Case, runner: Callable, tol) -> list[str]:
    """Run a case; return a list of failure messages (empty when it passes)."""
    from espo_ref.errors import ESPOInputError

    errors = [e for e in case.expects if e[1] == "~"]
    if errors:
        word = errors[0][2]
        try:
            runner(case)
        except ESPOInputError as exc:
            return [] if word in str(exc) else [f"error message {str(exc)!r} does not name {word!r}"]
        return [f"expected ESPOInputError naming {word!r}, nothing was raised"]
    outcome, info = runner(case)
    failures = []

    def close(got, want) -> bool:
        if isinstance(want, float) and math.isnan(want):
            return math.isnan(got)
        if isinstance(want, float) and math.isinf(want):
            return got == want
        return abs(got - want) <= tol.atol + tol.rtol * abs(want)

    for name, _, expr in case.expects:
        want = evaluate(expr)
        if name not in outcome.scalars:
            failures.append(f"{name}: not produced")
        elif not close(float(outcome.scalars[name]), float(want)):
            failures.append(f"{name}: got {outcome.scalars[name]!r}, want {expr} = {want!r}")
    if outcome.vector is not None:
        column = info["column"]
        for i, row in enumerate(case.rows):
            want = float(evaluate(row[column]))
            if not close(float(outcome.vector[i]), want):
                failures.append(f"row {i} {column}: got {outcome.vector[i]!r}, want {row[column]} = {want!r}")
    for name, items in expected_tokens(case, info.get("keys", [])).items():
        got_arr = outcome.tokens.get(name)
        if got_arr is None:
            failures.append(f"{name}: not produced")
            continue
        for (b, t), want in items:
            got = got_arr[b, t]
            ok = got == want if name == "clipped" else close(float(got), float(want))
            if not ok:
                failures.append(f"[{b},{t}] {name}: got {got!r}, want {want!r}")
    return failures
