"""The trainer's errors and the exit status each one gets from ``espo-ref train`` / ``demo``.

* ``TrainInputError`` (a ValueError) — a usage or input error: a flag, a file, a JSONL
  line, a run folder. Exit 2.
* ``NonFiniteLossError`` — the run's own negative result: the loss, the gradient norm or
  the model's activations became NaN or infinite. Exit 1.
* ``CheckpointWriteError`` — the environment failed the run while it wrote a checkpoint
  (a full disk, a quota, an I/O error); the command was right and ``--resume`` continues
  from the last good checkpoint once the cause is gone. Exit 1.
"""

from __future__ import annotations

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class TrainInputError(ValueError):
    """A usage or input error; the message names the flag, file (and line) or folder."""


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm, or the model's activations) became NaN or infinite; the run stopped."""


class NonFiniteActivationError(ArithmeticError):
    """The model produced a non-finite hidden state or logit (raised by the rollout code;
    the trainer turns it into NonFiniteLossError with the step)."""

    def __init__(self, what: str, value: float):
        super().__init__(f"{what} holds {value}")
        self.what, self.value = what, value


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (the message names the path and the cause, e.g. 'no space left')."""


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or in its __cause__ / __context__ chain): torch.save
    reports a failed write as RuntimeError('... unexpected pos ...') with the OSError as context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_os_error(exc: OSError) -> str:
    if exc.errno in DISK_FULL:
        return "no space left on device" + (" (disk quota exceeded)" if exc.errno == errno.EDQUOT else "")
    return exc.strerror or str(exc)
