"""A training batch validated once, where it is built, not in every micro-batch [ESPO-INPUT].

Shared by espo_ref.train and the TRL and verl integrations. What a batch holds when it is built
(the old policy's log-probabilities and entropies, the mask, the advantages) is checked once
with the loss's own checks (``check_built_batch``); each micro-batch then calls the loss with
``validate=False``, which makes no host-device sync. The new policy's log-probabilities exist
only in the micro-batch and are not checked there: with ``validate=False`` a non-finite one can
give a finite loss (torch's comparisons and clamps absorb a NaN), so ``nan_unless_finite``
turns it into a NaN loss and gradient, without a sync, for the trainer to report. The
conformance runner validates every call. Imports torch only when called.
"""

from __future__ import annotations


def check_built_batch(loss, old_logp, *inputs, **options) -> None:
    """[ESPO-INPUT] Raise the ESPOInputError that ``loss`` (an ``espo_ref.torch`` loss) raises with
    ``validate=True`` on the inputs known when the batch is built: ``old_logp`` and then ``inputs``
    in the loss's order (entropy, mask, advantages, config for ``espo_loss``; mask, advantages,
    config for a baseline), on the whole batch, so its positions are the batch's.

    The loss runs once, without gradient, on a stand-in for the new policy's log-probabilities:
    ``old_logp`` where it is finite, 0 elsewhere, so that a bad ``old_logp`` is named as
    ``old_logp`` (not as ``logp``, which the loss checks first). At ratio 1 every check that
    depends on the batch alone is made: shapes, dtypes, the mask, non-finite values, the entropy
    range, a batch without response tokens, a clip range or loss that overflows."""
    import torch

    olp = old_logp if isinstance(old_logp, torch.Tensor) else torch.as_tensor(old_logp)
    stand_in = torch.where(torch.isfinite(olp), olp, torch.zeros((), dtype=olp.dtype, device=olp.device))
    with torch.no_grad():
        loss(stand_in, old_logp, *inputs, **options, validate=True)


def nan_unless_finite(loss, logp, mask):
    """``loss``, or NaN (its value and its gradient) when ``logp`` is not finite at a response
    position (``mask`` True): the loss times 1 or NaN, a factor computed on the device (no host
    sync). Equal to ``loss``, value and gradient, when ``logp`` is finite there."""
    import torch

    finite = (torch.isfinite(logp.detach()) | ~mask.bool()).all()
    return loss * torch.where(finite, 1.0, float("nan")).to(loss.dtype)
