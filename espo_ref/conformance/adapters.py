"""Adapters: how the conformance runner calls an implementation under test.

An adapter turns a golden case into a call of the implementation and returns its outputs
as float64 numpy arrays in a dict: ``loss`` and ``grad`` for losses (plus any of
``groups``, ``eps``, ``log_ratio``, ``ratio``, ``clipped_high``, ``clipped_low`` and
``metrics`` it can provide), or the single output of a component function. Fields an
adapter does not return are not compared.

Writing a new adapter takes a dozen lines::

    from espo_ref.conformance.adapters import Adapter, register

    @register("my-trainer")
    class MyTrainerAdapter(Adapter):
        def run(self, case):
            t = self.tensors(case)                       # torch tensors, logp requires grad
            loss = self.impl(t["logp"], t["old_logp"], t["mask"], t["advantages"],
                             entropy=t.get("entropy"), **(case.config or {}))
            loss.backward()
            return {"loss": float(loss), "grad": self.numpy(t["logp"].grad)}

and ``espo-ref conform --impl my_pkg.losses:espo --adapter my-trainer`` runs it when
``my_pkg.losses`` (imported first) registers it; ``--adapter my_pkg.adapters:MyTrainerAdapter``
names an unregistered class directly.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .functions import COMPARED_METRICS, FUNCTIONS, LOSS_TOKEN_FIELDS
from .golden import GoldenCase

ADAPTERS: dict[str, type["Adapter"]] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        ADAPTERS[name] = cls
        return cls
    return wrap


class Adapter:
    """Calls ``impl`` on a case; ``backend`` is "numpy" or "torch", ``device`` a torch device."""

    name = "base"

    def __init__(self, impl: Callable, function: str, backend: str = "numpy", device: str = "cpu"):
        self.impl = impl
        self.function = FUNCTIONS[function]
        self.backend = backend
        self.device = device

    def run(self, case: GoldenCase) -> dict[str, Any]:
        raise NotImplementedError

    # helpers ---------------------------------------------------------------------------

    def tensors(self, case: GoldenCase) -> dict[str, Any]:
        """The case's inputs as torch tensors of the case dtype; logp requires grad."""
        import torch

        dtypes = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
        out = {}
        for name, value in case.inputs.items():
            if value.dtype.kind == "f":
                t = torch.tensor(value, dtype=torch.float64).to(device=self.device, dtype=dtypes[case.dtype])
                if name == "logp":
                    t.requires_grad_(True)
            else:
                t = torch.from_numpy(np.array(value)).to(self.device)
            out[name] = t
        return out

    def arrays(self, case: GoldenCase) -> dict[str, np.ndarray]:
        """The case's inputs as numpy arrays (float32 for float32 cases, else float64)."""
        return {k: v.astype(np.float32) if (v.dtype.kind == "f" and case.dtype == "float32") else v
                for k, v in case.inputs.items()}

    @staticmethod
    def numpy(x) -> np.ndarray:
        if hasattr(x, "detach"):
            x = x.detach().cpu()
            if x.dtype.is_floating_point:
                x = x.double()
            x = x.numpy()
        return np.asarray(x)


def _result_fields(result, outputs: dict) -> dict:
    for name in LOSS_TOKEN_FIELDS:
        if name in outputs:
            continue
        value = getattr(result, name, None)
        if value is not None:
            outputs[name] = Adapter.numpy(value)
    metrics = getattr(result, "metrics", None)
    if metrics:
        outputs["metrics"] = {k: float(metrics[k]) for k in COMPARED_METRICS if k in metrics}
    return outputs


@register("native")
class NativeAdapter(Adapter):
    """Our own signature: ``fn(*inputs, config)`` returning a LossResult-like object (losses)
    or the output array (components). With ``backend="torch"`` the gradient is autograd's."""

    def run(self, case: GoldenCase) -> dict[str, Any]:
        spec = self.function
        config = spec.make_config(case.config)
        if self.backend == "torch":
            inputs = self.tensors(case)
        else:
            inputs = self.arrays(case)
        args = [inputs[name] for name in spec.inputs]
        if not spec.is_loss:
            if config is not None:
                args.append(config)
            return {spec.output: self.numpy(self.impl(*args, **case.kwargs))}
        result = self.impl(*args, config)
        loss = result.loss
        outputs: dict[str, Any] = {}
        if self.backend == "torch" and hasattr(loss, "backward") and loss.requires_grad:
            loss.backward()
            outputs["grad"] = self.numpy(inputs["logp"].grad)
        outputs["loss"] = float(self.numpy(loss))
        return _result_fields(result, outputs)


@register("torch-loss")
class TorchLossAdapter(Adapter):
    """Any callable with our argument order returning a differentiable loss tensor (or an
    object with ``.loss``); the gradient is taken by autograd. Only loss and grad compare."""

    def run(self, case: GoldenCase) -> dict[str, Any]:
        spec = self.function
        inputs = self.tensors(case)
        out = self.impl(*[inputs[name] for name in spec.inputs], spec.make_config(case.config))
        loss = getattr(out, "loss", out)
        loss.backward()
        return {"loss": float(self.numpy(loss)), "grad": self.numpy(inputs["logp"].grad)}


class VerlConfig(dict):
    """A dict with attribute access, as verl's policy-loss functions read their config."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@register("verl")
class VerlAdapter(Adapter):
    """A verl-style policy loss ``fn(old_log_prob, log_prob, advantages, response_mask,
    loss_agg_mode, config) -> loss | (loss, ...)``. Advantages are passed per token [B, T];
    the config carries our fields plus verl's names (clip_ratio_low / clip_ratio_high /
    clip_ratio_c) and, for ESPO, the old-policy ``entropy`` tensor."""

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        t = self.tensors(case)
        mask = t["mask"]
        adv = t["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None].expand_as(mask).contiguous()
        fields = dict(case.config or {})
        config = VerlConfig(fields)
        config.setdefault("clip_ratio_low", fields.get("eps_low"))
        config.setdefault("clip_ratio_high", fields.get("eps_high"))
        config.setdefault("clip_ratio_c", fields.get("dual_clip"))
        if "entropy" in t:
            config["entropy"] = t["entropy"]
        mode = fields.get("loss_agg_mode", "seq-mean-token-mean")
        out = self.impl(t["old_logp"], t["logp"], adv, mask.to(torch.bool), mode, config)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        loss.backward()
        return {"loss": float(self.numpy(loss)), "grad": self.numpy(t["logp"].grad)}
