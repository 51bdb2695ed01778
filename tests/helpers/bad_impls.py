"""Implementations that must never pass the conformance runner (harness mutation tests)."""

import dataclasses
import os
import sys
import time
import types

import numpy as np

import espo_ref


def raises_unrelated(*args):
    raise RuntimeError("nope")


def returns_none(*args):
    return None


def loss_only(*args):
    """A correct loss, without the gradient: no case may pass on the loss alone."""
    return types.SimpleNamespace(loss=espo_ref.espo_loss(*args).loss)


def returns_nan(*args):
    return dataclasses.replace(espo_ref.espo_loss(*args), loss=float("nan"))


def exits(*args):
    sys.exit(0)


def hard_exit(*args):
    os._exit(0)


def hangs(*args):
    time.sleep(3600)


def wrong_shape(*args):
    out = espo_ref.espo_loss(*args)
    return dataclasses.replace(out, grad=out.grad[:, :-1])


def ignores_config_checks(logp, old_logp, entropy, mask, advantages, config):
    """Uses only vocab_size: an invalid top_fraction is silently replaced by the default."""
    return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages,
                              espo_ref.ESPOConfig(vocab_size=config.vocab_size))


def prints_to_stdout(*args):
    print("debug output of the implementation")
    return espo_ref.espo_loss(*args)


def raises_without_argument_name(logp, old_logp, entropy, mask, advantages, config):
    """Validates, but with a message that names nothing."""
    try:
        return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    except ValueError:
        raise ValueError("bad input") from None


class AdapterThatCrashes:
    """An adapter with a bug of its own: its exceptions are harness errors, never passes."""

    provides = None

    def __init__(self, impl, function, backend, device):
        self.impl = impl

    def run(self, case):
        return {"loss": np.asarray(case.expected)["loss"]}


def _grpo(logp, old_logp, mask, advantages, config, stop_gradient: bool):
    """Token-level GRPO (seq-mean-token-mean, clamp +-20), written from specs/baselines.md."""
    import torch

    dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
    old = old_logp.detach() if stop_gradient else old_logp
    adv = advantages.detach() if stop_gradient else advantages
    lp = torch.where(mask, logp.to(dtype), 0.0)
    log_r = (lp - torch.where(mask, old.to(dtype), 0.0)).clamp(-20.0, 20.0)
    r = torch.exp(log_r)
    a = (adv if adv.dim() == 2 else adv[:, None]).to(dtype)
    pg = torch.maximum(-a * r, -a * r.clamp(1 - config.eps_low, 1 + config.eps_high))
    pg = torch.where(mask, pg, 0.0)
    rows = mask.any(dim=1)
    return (pg.sum(dim=1)[rows] / mask.sum(dim=1)[rows]).mean()


def grpo_with_stop_gradient(logp, old_logp, mask, advantages, config):
    return _grpo(logp, old_logp, mask, advantages, config, True)


def grpo_without_stop_gradient(logp, old_logp, mask, advantages, config):
    """Lets gradient flow into old_logp and the advantages: wrong whenever they are attached."""
    return _grpo(logp, old_logp, mask, advantages, config, False)


def loss_of_shape_one(logp, old_logp, entropy, mask, advantages, config):
    """The reference's loss as a tensor of shape [1]: not a scalar, whatever its value."""
    import espo_ref.torch as espo_torch

    out = espo_torch.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    return types.SimpleNamespace(loss=out.loss.reshape(1))


def returns_a_list(logp, old_logp, entropy, mask, advantages, config):
    """[loss] instead of loss: the implementation's fault, not the harness's."""
    import espo_ref.torch as espo_torch

    return [espo_torch.espo_loss(logp, old_logp, entropy, mask, advantages, config).loss]


def imports_torch_inside(logp, old_logp, entropy, mask, advantages, config):
    """A correct torch loss whose module never imports torch at the top."""
    import torch

    import espo_ref.torch as espo_torch

    assert isinstance(logp, torch.Tensor), "the runner passed numpy arrays to a torch implementation"
    return espo_torch.espo_loss(logp, old_logp, entropy, mask, advantages, config)


def in_verl_order(old_log_prob, log_prob, advantages, response_mask, entropy, config):
    """The reference, written with verl's argument order."""
    return espo_ref.espo_loss(log_prob, old_log_prob, entropy, response_mask, advantages, config)


def logp_old_logp_swapped(old_logp, logp, entropy, mask, advantages, config):
    return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)


def grpo_in_verl_order(old_log_prob, log_prob, advantages, response_mask, config):
    return espo_ref.grpo_loss(log_prob, old_log_prob, response_mask, advantages, config)


def loss_in_float16_below_float64(logp, old_logp, entropy, mask, advantages, config):
    """Right in float64; rounds the loss to float16 for lower-precision inputs (a precision bug)."""
    low = np.asarray(logp).dtype != np.float64
    out = espo_ref.espo_loss(*(np.asarray(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else x
                               for x in (logp, old_logp, entropy, mask, advantages)), config)
    return dataclasses.replace(out, loss=float(np.float16(out.loss))) if low else out
