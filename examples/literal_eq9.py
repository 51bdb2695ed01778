"""A deliberately wrong ESPO loss, to see what ``espo-ref explain --impl`` and ``espo-ref conform``
say about one: Eq. 9 read as printed in the paper, the token ratio s_tau * pi / sg[pi_old], where
the spec ([ESPO-RATIO-TOKEN]) pins the GSPO-token form s_tau * pi / sg[pi] (value s_tau).

From the repository root, on the last batch of ``espo-ref demo`` (the last update of a step, after
the policy moved):

    espo-ref explain runs/demo/espo/batches/step_000400_last.npz --impl examples.literal_eq9:espo_loss

(``--force`` too when an earlier explain wrote that batch's page.) It exits 1 and names the reading
(literal-eq9 [ESPO-RATIO-TOKEN]). On a step's first mini-batch (``step_000400.npz``) the policy has
not moved, pi = pi_old, and both readings agree: the mistake shows only where the ratios are no
longer 1, so a check on a step's first update cannot catch it.

It is the reference with ``ratio_form="literal"`` (the spec's name for this reading); nothing else
changes.
"""

from __future__ import annotations

import espo_ref


def espo_loss(logp, old_logp, entropy, mask, advantages, config):
    return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config.replace(ratio_form="literal"))
