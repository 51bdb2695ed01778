"""A deliberately wrong ESPO loss, to see what ``espo-ref explain --impl`` and ``espo-ref conform``
say about one: equal entropies rank the *later* position first when the high-entropy group is
chosen, where the spec ([ESPO-GROUP-TOPFRAC]) ranks the earlier one first.

    espo-ref explain BATCH --impl examples.later_ties:espo_loss      # from the repository root

BATCH needs tied entropies in a response for the reading to matter: a trained model's float entropies
rarely tie (the demo's batches have none), so there it agrees with the reference; see
``literal_eq9.py`` for a misreading that the demo's last batch shows.

It is the reference run on each response with its response tokens in reverse order (so a tie
goes to the later position) and its per-token outputs put back in place; nothing else changes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import espo_ref


def espo_loss(logp, old_logp, entropy, mask, advantages, config):
    mask = np.asarray(mask, dtype=bool)
    B, T = mask.shape
    # order[b] lists row b's response positions last-first, then its padding
    key = np.where(mask, -np.arange(T)[None, :], T + np.arange(T)[None, :])
    order = np.argsort(key, axis=1, kind="stable")
    back = np.argsort(order, axis=1)

    def flip(x):
        x = np.asarray(x)
        return np.take_along_axis(x, order, axis=1) if x.ndim == 2 else x

    result = espo_ref.espo_loss(flip(logp), flip(old_logp), flip(entropy), flip(mask), flip(advantages), config)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    for name, value in fields.items():
        if isinstance(value, np.ndarray) and value.shape == (B, T):
            fields[name] = np.take_along_axis(value, back, axis=1)
    fields["extras"] = {k: np.take_along_axis(v, back, axis=1) for k, v in result.extras.items()}
    return type(result)(**fields)
