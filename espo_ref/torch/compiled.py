"""The torch losses through ``torch.compile``, for checking that a compiled loss still conforms:

    espo-ref conform --impl espo_ref.torch.compiled:espo_loss

[ESPO-OBJ] [BASE-GRPO] [BASE-DAPO] [BASE-GSPO] [BASE-GMPO] [BASE-CISPO] Each function first runs
the eager loss's checks when ``validate`` is true (the same errors, with the same messages,
as the eager loss), then returns the result of the compiled ``validate=False`` loss, whose graph
has no host sync and no break (``fullgraph=True``). ``ESPO_REF_COMPILE_BACKEND`` picks the
backend (default ``inductor``; ``aot_eager`` traces the same graph without generating code).

Compiling specialises on the config's values: each distinct config is one more compilation,
so this module raises dynamo's recompile limit (a conformance run meets dozens of configs).
In a training, compile once: ``torch.compile(espo_loss, fullgraph=True)`` and call it with
``validate=False`` after validating the batch where it is built.
"""

from __future__ import annotations

import functools
import os

import torch

from . import baselines as _baselines
from . import objective as _objective

BACKEND = os.environ.get("ESPO_REF_COMPILE_BACKEND", "inductor")
RECOMPILE_LIMIT = 512

for _name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(getattr(torch._dynamo.config, _name), RECOMPILE_LIMIT))
        break
if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           8 * RECOMPILE_LIMIT)


def compiled(loss, backend: str | None = None):
    """[ESPO-OBJ] ``loss`` compiled whole (``fullgraph=True``), validating eagerly first."""
    graph = torch.compile(loss, fullgraph=True, backend=backend or BACKEND)

    @functools.wraps(loss)
    def run(*args, validate: bool = True, **kwargs):
        if validate:
            loss(*args, validate=True, **kwargs)  # the checks (and nothing it returns)
        # the config's floats stay constants of the graph (dynamo would make them symbolic after a
        # recompile, and the config's checks and exact decimal reading need their values)
        with torch._dynamo.config.patch(specialize_float=True):
            return graph(*args, validate=False, **kwargs)

    run.compiled_graph = graph
    return run


espo_loss = compiled(_objective.espo_loss)
grpo_loss = compiled(_baselines.grpo_loss)
dapo_loss = compiled(_baselines.dapo_loss)
gspo_loss = compiled(_baselines.gspo_loss)
gmpo_loss = compiled(_baselines.gmpo_loss)
cispo_loss = compiled(_baselines.cispo_loss)
