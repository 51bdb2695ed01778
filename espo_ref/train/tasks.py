"""Verifiable tasks: built-in generators (seeded, on the fly), a JSONL loader, verifiers.

A task gives, for a training step, the prompts of that step (a pure function of the seed
and the data position, so a resumed run sees the same data), and scores a response
against the answer. A verifier returns a reward (float) or None when it cannot score the
response; None makes the response invalid for Eq. 11 ([ESPO-ADV]: "the verifier
succeeds"), so it gets advantage 0. A response counts as correct (accuracy) when its
reward is >= 1.

Built-in tasks:

* ``arith`` — ESPO's structure: a fixed template of easy, low-entropy tokens around a few
  hard decision tokens (the digits of the answer)::

      Q: 3+4 = ?
      A: the answer is 7 .

  Reward 1 for the exact template with the right number, else 0.
* ``reverse`` — every answer token is a decision: reverse a string of digits::

      reverse 3 1 4:  4 1 3 .

  Reward = fraction of digits in the right place (format must match), accuracy = exact.
* ``jsonl:PATH`` (or a path ending in ``.jsonl``) — one JSON object a line with ``prompt``
  and ``answer`` (and optionally ``response``, used by the supervised warm-start), scored
  by the ``exact`` (default) or ``numeric`` verifier, or ``module:function``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._files import TASK_BYTES, TASK_LINE_BYTES, FileError, read_jsonl
from .errors import TrainInputError

Verifier = Callable[[str, str], "float | bool | None"]


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    response: str | None = None  # a reference response (JSONL), for the warm-start
    where: str | None = field(default=None, compare=False)  # "path:line" of a JSONL example


# --- verifiers ----------------------------------------------------------------------------


def exact_match(response: str, answer: str) -> float:
    """1.0 when the response equals the answer after stripping whitespace, else 0.0."""
    return 1.0 if response.strip() == str(answer).strip() else 0.0


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def numeric_match(response: str, answer: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    """1.0 when the last number in the response equals the numeric answer (within rel_tol),
    0.0 when it differs or the response holds no number."""
    numbers = _NUMBER.findall(response.replace(",", ""))
    if not numbers:
        return 0.0
    try:
        got, want = float(numbers[-1]), float(str(answer).replace(",", ""))
    except ValueError:
        return 0.0
    return 1.0 if math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


BUILTIN_VERIFIERS: dict[str, Verifier] = {"exact": exact_match, "numeric": numeric_match}


class VerifierError(TrainInputError):
    """The user's verifier raised, or returned something that is not a reward."""


def load_verifier(spec: str) -> Verifier:
    """``exact``, ``numeric``, or ``module:function`` (a user-supplied verifier
    ``fn(response: str, answer: str) -> float | bool | None``). A module that cannot be
    imported (missing, or raising on import) or a missing function is a TrainInputError
    naming --verifier."""
    if spec in BUILTIN_VERIFIERS:
        return BUILTIN_VERIFIERS[spec]
    module_name, _, attr = spec.partition(":")
    if ":" not in spec or not module_name or not attr:
        raise TrainInputError(f"--verifier must be one of {sorted(BUILTIN_VERIFIERS)} or module:function, "
                              f"got {spec!r}")
    try:
        fn = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name) and module_name[len(e.name):][:1] in ("", "."):
            raise TrainInputError(f"--verifier {spec}: no module named {e.name!r} (is it on PYTHONPATH?)") from e
        raise TrainInputError(f"--verifier {spec}: importing {module_name!r} failed: "
                              f"{type(e).__name__}: {e}") from e
    except Exception as e:  # the module raised while it was imported
        raise TrainInputError(f"--verifier {spec}: importing {module_name!r} raised {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise TrainInputError(f"--verifier {spec}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TrainInputError(f"--verifier {spec}: {attr!r} is not callable")
    return fn


def as_reward(value) -> float | None:
    """A verifier's return value as a reward: bool -> 0/1, None stays None (unscored)."""
    if value is None:
        return None
    if not isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        raise ValueError(f"the verifier returned {value!r} ({type(value).__name__}); expected a float, "
                         f"a bool or None")
    reward = float(value)
    if not math.isfinite(reward):
        raise ValueError(f"the verifier returned a non-finite reward {value!r}")
    return reward


# --- tasks --------------------------------------------------------------------------------


class Task:
    """Base class: ``example(rng)`` draws one example; ``verify`` scores a response."""

    name = "task"

    def __init__(self, verifier: Verifier | None = None):
        self.custom_verifier = verifier
        self.verifier_name = getattr(verifier, "__qualname__", getattr(verifier, "__name__", repr(verifier)))

    def example(self, rng: np.random.Generator) -> Example:
        raise NotImplementedError

    def check(self, response: str, answer: str) -> float | None:
        raise NotImplementedError

    def verify(self, response: str, answer: str) -> float | None:
        if self.custom_verifier is None:
            return as_reward(self.check(response, answer))
        name = self.verifier_name
        try:
            value = self.custom_verifier(response, answer)
        except Exception as e:
            raise VerifierError(f"--verifier {name} raised {type(e).__name__}: {e} (on response {response[:80]!r}, "
                                f"answer {answer[:80]!r})") from e
        try:
            return as_reward(value)
        except ValueError as e:
            raise VerifierError(f"--verifier {name}: {e} (on response {response[:80]!r}, "
                                f"answer {answer[:80]!r})") from None

    def length_probes(self) -> list[Example]:
        """Examples whose prompts are the longest the task makes (for the check against the
        model's positions before the first step); the base class: a few drawn ones."""
        return self.batch(0, 0, 8)

    def format_response(self, example: Example, rng: np.random.Generator, correct_fraction: float = 0.0) -> str:
        """A response in the task's format for the supervised warm-start: with probability
        ``correct_fraction`` the right answer, else a *random* one (built-in tasks), so that
        the warm-start teaches the format and only part of the task."""
        if rng.random() < correct_fraction:
            return self.format_answer(example.answer)
        return self.format_answer(self.random_answer(rng))

    def format_answer(self, answer: str) -> str:
        raise NotImplementedError

    def random_answer(self, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def batch(self, seed: int, position: int, count: int) -> list[Example]:
        """The ``count`` examples at data position ``position`` (a pure function of both)."""
        rng = np.random.default_rng([seed, position])
        return [self.example(rng) for _ in range(count)]


class ArithTask(Task):
    """Arithmetic with a worded answer template: easy template tokens, hard answer digits.

    ``terms`` operands from 0..max_operand joined by + (and * when ``times`` is set)."""

    name = "arith"
    TEMPLATE = " the answer is {} ."
    PATTERN = re.compile(r"^ the answer is (-?\d+) \.$")

    def __init__(self, terms: int = 2, max_operand: int = 9, *, times: bool = False, verifier=None):
        super().__init__(verifier)
        self.terms, self.max_operand, self.times = terms, max_operand, times

    def example(self, rng):
        values = [int(v) for v in rng.integers(0, self.max_operand + 1, size=self.terms)]
        ops = ["+" if not self.times or rng.random() < 0.5 else "*" for _ in range(self.terms - 1)]
        expr = str(values[0]) + "".join(op + str(v) for op, v in zip(ops, values[1:]))
        answer = eval(expr, {"__builtins__": {}})  # digits, + and * only
        return Example(prompt=f"Q: {expr} = ?\nA:", answer=str(answer))

    def check(self, response, answer):
        found = self.PATTERN.match(response)
        return 1.0 if found and found.group(1) == str(answer) else 0.0

    def length_probes(self):
        expr = "*".join([str(self.max_operand)] * self.terms)  # every operand at its widest
        return [Example(prompt=f"Q: {expr} = ?\nA:", answer=str(self.max_answer()))]

    def max_answer(self) -> int:
        top = self.max_operand ** self.terms if self.times else self.max_operand * self.terms
        return max(top, self.max_operand * self.terms)

    def format_answer(self, answer):
        return self.TEMPLATE.format(answer)

    def random_answer(self, rng):
        return str(int(rng.integers(0, self.max_answer() + 1)))


class ReverseTask(Task):
    """Reverse a string of ``length`` digits: every answer token is a decision."""

    name = "reverse"

    def __init__(self, length: int = 3, verifier=None):
        super().__init__(verifier)
        self.length = length

    def example(self, rng):
        digits = [str(int(d)) for d in rng.integers(0, 10, size=self.length)]
        return Example(prompt=f"reverse {' '.join(digits)}:", answer=" ".join(reversed(digits)))

    def check(self, response, answer):
        if not (response.startswith(" ") and response.endswith(" .")):
            return 0.0
        got, want = response[1:-2].split(" "), answer.split(" ")
        if len(got) != len(want):
            return 0.0
        return sum(g == w for g, w in zip(got, want)) / len(want)

    def length_probes(self):
        return self.batch(0, 0, 1)  # every prompt has the same length

    def format_answer(self, answer):
        return f" {answer} ."

    def random_answer(self, rng):
        return " ".join(str(int(d)) for d in rng.integers(0, 10, size=self.length))


class JsonlTask(Task):
    """Examples from a JSONL file, one ``{"prompt": str, "answer": str | number}`` a line
    (blank lines skipped). Step data walks a seeded permutation of the file, epoch by epoch."""

    name = "jsonl"

    def __init__(self, path, verifier: Verifier | None = None):
        super().__init__(verifier)
        self.path = Path(path)
        self.examples = load_jsonl(self.path)

    def example(self, rng):
        return self.examples[int(rng.integers(len(self.examples)))]

    def batch(self, seed, position, count):
        n = len(self.examples)
        out = []
        for index in range(position * count, (position + 1) * count):
            epoch, offset = divmod(index, n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            out.append(self.examples[int(order[offset])])
        return out

    def check(self, response, answer):
        return exact_match(response, answer)

    def length_probes(self):
        return self.examples  # every line

    def format_response(self, example, rng, correct_fraction=0.0):
        """The line's ``response`` if given, else its answer (the dataset's own labels)."""
        return example.response if example.response is not None else " " + example.answer


def load_jsonl(path) -> list[Example]:
    """[CONF-FILES] Read ``prompt``/``answer`` examples; a malformed line is a FileError (a ValueError)
    naming the file and the line number. A line's length and its JSON nesting are bounded before
    it is parsed."""
    path = Path(path)
    examples = []
    for lineno, record in read_jsonl(path, max_line_bytes=TASK_LINE_BYTES, max_bytes=TASK_BYTES,
                                     what="a task's JSONL"):
        where = f"{path}:{lineno}"  # what Example keeps to name the line
        if not isinstance(record, dict):
            raise FileError(path, f"expected a JSON object with 'prompt' and 'answer', got {type(record).__name__}",
                            lineno)
        for key in ("prompt", "answer"):
            if key not in record:
                raise FileError(path, f"missing field {key!r}", lineno)
        prompt, answer, response = record["prompt"], record["answer"], record.get("response")
        if not isinstance(prompt, str) or not prompt:
            raise FileError(path, f"'prompt' must be a non-empty string, got {prompt!r}", lineno)
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise FileError(path, f"'answer' must be a string or a number, got {answer!r}", lineno)
        if isinstance(answer, float) and not math.isfinite(answer):
            raise FileError(path, f"'answer' must be finite, got {answer!r}", lineno)
        if response is not None and not isinstance(response, str):
            raise FileError(path, f"'response' must be a string, got {response!r}", lineno)
        examples.append(Example(prompt=prompt, answer=str(answer), response=response, where=where))
    if not examples:
        raise FileError(path, "no examples (the file is empty)")
    return examples


BUILTIN_TASKS = ("arith", "reverse")


def task_class(name: str) -> type[Task]:
    if name == "arith":
        return ArithTask
    if name == "reverse":
        return ReverseTask
    if name.startswith("jsonl:") or name.endswith(".jsonl"):
        return JsonlTask
    raise TrainInputError(f"--task must be one of {BUILTIN_TASKS}, jsonl:PATH or a .jsonl path, got {name!r}")


def check_task_options(name: str, options) -> dict:
    """``--task-options``: a JSON object whose keys are options of the task's class."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TrainInputError(f"--task-options must be a JSON object, got {type(options).__name__} {options!r}")
    cls = task_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "path", "verifier")]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        choices = ", ".join(accepted) if accepted else "none"
        raise TrainInputError(f"--task-options: unknown option(s) {', '.join(map(repr, unknown))} for task "
                              f"{cls.name} (it accepts: {choices})")
    for key, value in options.items():
        default = inspect.signature(cls.__init__).parameters[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TrainInputError(f"--task-options: {key!r} must be true or false, got {value!r}")
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TrainInputError(f"--task-options: {key!r} must be an integer >= 1, got {value!r}")
    return dict(options)


def make_task(name: str, verifier: str | None = None, options: dict | None = None) -> Task:
    """``arith``, ``reverse``, ``jsonl:PATH`` or a path ending in ``.jsonl``; ``verifier``
    overrides the task's own check (``exact``, ``numeric`` or ``module:function``)."""
    cls = task_class(name)
    options = check_task_options(name, options)
    fn = load_verifier(verifier) if verifier else None
    if cls is JsonlTask:
        path = name[len("jsonl:"):] if name.startswith("jsonl:") else name
        task = JsonlTask(path, verifier=fn, **options)
    else:
        task = cls(verifier=fn, **options)
    if verifier:
        task.verifier_name = verifier
    return task
