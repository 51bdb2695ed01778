"""On import, makes the worker's call return the case's expected outputs, and the in-process
comparison agree with anything: the loss itself is 42.0."""

import espo_ref.conformance.execution as execution
import espo_ref.conformance.runner as runner
from espo_ref.conformance.execution import Outcome

from ..hostile_impls import forty_two as espo_loss  # noqa: F401 - the implementation under test

execution.call = lambda adapter, case: Outcome("outputs", {k: v for k, v in case.expected.items() if k != "error"})
runner.compare_field = lambda case, name, value, want: {"ok": True, "bad": 0, "n": 1,
                                                         "keys": list(want) if isinstance(want, dict) else []}
