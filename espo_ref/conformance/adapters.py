"""[CONF-CALL] [CONF-ADAPTERS] Adapters: how the conformance runner calls an implementation under test.

specs/conformance.md is the user-facing description of this API; in short:

An adapter is a class built as ``Adapter(impl, function, backend, device)`` whose
``run(case)`` turns a golden case (:class:`~espo_ref.conformance.golden.GoldenCase`) into a
call of ``impl`` and returns its outputs in a dict of numbers / arrays: ``loss`` and ``grad``
for losses (plus any of ``groups``, ``eps``, ``log_ratio``, ``ratio``, ``clipped_high``,
``clipped_low``, ``weight`` and a ``metrics`` dict it can provide), or the single output of a
component function (``entropy``, ``n_high``, ``groups``, ``eps``, ``log_ratio``,
``advantages``). ``provides`` names the fields it can return (None: every field of the case);
a loss case always compares ``loss`` and ``grad``, and a field an adapter provides but does
not return is a failure.

``impl`` reaches the adapter wrapped, so that an exception *raised by the implementation* is
told apart from one raised by the adapter (a bug of the harness, never a pass). An adapter
raises :class:`BadResult` when the implementation returned something unusable (None, no
``.loss``, a loss that is not differentiable).

Writing a new adapter takes a dozen lines::

    from espo_ref.conformance.adapters import Adapter, register

    @register("my-trainer")
    class MyTrainerAdapter(Adapter):
        provides = ("loss", "grad")

        def run(self, case):
            t = self.tensors(case)                       # torch tensors, logp requires grad
            cfg = case.config or {}                      # raw option values, e.g. {"vocab_size": 16}
            loss = self.impl(t["logp"], t["old_logp"], t["mask"], t["advantages"],
                             entropy=t.get("entropy"), **cfg)
            return {"loss": self.scalar(loss), "grad": self.grad(loss, t["logp"])}

and ``espo-ref conform --impl my_pkg.losses:espo --adapter my-trainer`` runs it when
``my_pkg.losses`` (imported first) registers it; ``--adapter my_pkg.adapters:MyTrainerAdapter``
names an unregistered class directly.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from .functions import FUNCTIONS, LOSS_TOKEN_FIELDS
from .golden import GoldenCase

ADAPTERS: dict[str, type["Adapter"]] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        ADAPTERS[name] = cls
        return cls
    return wrap


class BadResult(Exception):
    """The implementation returned something the adapter cannot use (a failure of the
    implementation, not of the harness)."""


class ImplementationRaised(Exception):
    """An exception raised inside the implementation (``original`` is it)."""

    def __init__(self, original: BaseException):
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


class ImplementationExited(Exception):
    """The implementation called sys.exit (or raised SystemExit)."""

    def __init__(self, code):
        super().__init__(f"the implementation called sys.exit({code!r})")
        self.code = code


class TrackedImpl:
    """The implementation as adapters see it: calling it marks every exception it raises as
    the implementation's own."""

    def __init__(self, fn: Callable):
        self.fn = fn
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args, **kwargs):
        with implementation_code():
            return self.fn(*args, **kwargs)


class implementation_code:
    """Context manager: exceptions inside belong to the implementation (its call, or the
    backward pass through the graph it built)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (ImplementationRaised, ImplementationExited, BadResult)):
            return False
        if isinstance(exc, SystemExit):
            raise ImplementationExited(exc.code) from None
        if isinstance(exc, Exception):
            raise ImplementationRaised(exc) from exc
        return False  # KeyboardInterrupt and friends propagate


class Adapter:
    """[CONF-ADAPTERS] Calls ``impl`` on a case; ``backend`` is "numpy" or "torch", ``device`` a torch device."""

    name = "base"
    provides: tuple[str, ...] | None = None  # None: every field of the case

    def __init__(self, impl: Callable, function: str, backend: str = "numpy", device: str = "cpu"):
        self.impl = impl if isinstance(impl, TrackedImpl) else TrackedImpl(impl)
        self.function = FUNCTIONS[function]
        self.backend = backend
        self.device = device

    def run(self, case: GoldenCase) -> dict[str, Any]:
        raise NotImplementedError

    # helpers ---------------------------------------------------------------------------

    def config(self, case: GoldenCase):
        """The case's config object, built *without* its checks: validating the option
        values is the implementation's job (the config-error cases test it)."""
        return self.function.raw_config(case.config)

    # Inputs the spec makes constants ([ESPO-OBJ]: no gradient flows into them).
    CONSTANTS = ("old_logp", "advantages", "entropy")

    def tensors(self, case: GoldenCase, attach_constants: bool = True) -> dict[str, Any]:
        """The case's inputs as torch tensors of the case dtype; logp requires grad.

        With ``attach_constants`` the constants (old_logp, advantages, entropy) arrive attached
        to logp's graph, with unchanged values (x + (logp - logp.detach()), an exact zero): a
        loss that does not stop their gradient gets a wrong gradient, as it would in a trainer
        whose old policy is the current one on the first update."""
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
        if attach_constants and "logp" in out:
            zero = torch.nan_to_num(out["logp"] - out["logp"].detach(), nan=0.0, posinf=0.0, neginf=0.0)
            for name in self.CONSTANTS:
                if name in out:
                    out[name] = out[name] + (zero if out[name].dim() == 2 else zero.sum(dim=-1))
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

    @classmethod
    def scalar(cls, loss) -> float:
        """The loss as a float; BadResult when it is not one number of shape () (a tensor of
        shape [1] is not a scalar: a trainer calling .backward() on it would need a grad_outputs)."""
        if loss is None:
            raise BadResult("the implementation returned None where a loss was expected")
        try:
            arr = cls.numpy(loss)
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is not a number
            raise BadResult(f"the loss is not a number: {type(loss).__name__} ({type(exc).__name__}: {exc})") from None
        if arr.shape != ():
            raise BadResult(f"the loss has shape {tuple(arr.shape)}, not () (one number)")
        if arr.dtype.kind not in "fiu":
            raise BadResult(f"the loss is a {type(loss).__name__} of dtype {arr.dtype}, not a number")
        return float(arr)

    def call_order(self, case: GoldenCase) -> tuple[str, ...]:
        """The order in which the case's inputs are passed: the function's, unless the runner
        probes another calling convention ([CONF-CALL])."""
        return getattr(case, "call_order", None) or self.function.inputs

    def grad(self, loss, logp) -> np.ndarray:
        """d loss / d logp by autograd (a backward pass through the implementation's graph)."""
        if not getattr(loss, "requires_grad", False):
            raise BadResult("the loss is not differentiable with respect to logp (requires_grad is False)")
        with implementation_code():
            loss.backward()
        if logp.grad is None:
            raise BadResult("the loss does not depend on logp (no gradient reached it)")
        return self.numpy(logp.grad)


def _result_fields(result, outputs: dict) -> dict:
    for name in LOSS_TOKEN_FIELDS:
        if name in outputs:
            continue
        value = getattr(result, name, None)
        if value is not None:
            outputs[name] = Adapter.numpy(value)
    metrics = getattr(result, "metrics", None)
    if metrics:
        outputs["metrics"] = {k: float(v) for k, v in dict(metrics).items()
                              if isinstance(v, (int, float)) or np.ndim(v) == 0}
    return outputs


@register("native")
class NativeAdapter(Adapter):
    """[CONF-CALL] Our own signature: ``fn(*inputs, config)`` returning a LossResult-like object (losses)
    or the output array (components). With ``backend="torch"`` the gradient is autograd's;
    every field of the case is compared."""

    def run(self, case: GoldenCase) -> dict[str, Any]:
        spec = self.function
        config = self.config(case)
        inputs = self.tensors(case) if self.backend == "torch" else self.arrays(case)
        args = [inputs[name] for name in self.call_order(case)]
        if not spec.is_loss:
            if config is not None:
                args.append(config)
            out = self.impl(*args, **case.kwargs)
            if out is None:
                raise BadResult(f"the implementation returned None where {spec.output!r} was expected")
            return {spec.output: self.numpy(out)}
        result = self.impl(*args, config)
        if result is None:
            raise BadResult("the implementation returned None; expected an object with .loss and .grad")
        if not hasattr(result, "loss"):
            raise BadResult(f"the implementation returned a {type(result).__name__} without .loss "
                            "(use --adapter torch-loss for a function that returns the loss tensor)")
        loss = result.loss
        outputs: dict[str, Any] = {"loss": self.scalar(loss)}
        if self.backend == "torch" and getattr(loss, "requires_grad", False):
            outputs["grad"] = self.grad(loss, inputs["logp"])
        return _result_fields(result, outputs)


@register("torch-loss")
class TorchLossAdapter(Adapter):
    """Any callable with our argument order returning a differentiable loss tensor (or an
    object with ``.loss``); the gradient is taken by autograd. Only loss and grad compare."""

    provides = ("loss", "grad")

    def run(self, case: GoldenCase) -> dict[str, Any]:
        inputs = self.tensors(case)
        out = self.impl(*[inputs[name] for name in self.call_order(case)], self.config(case))
        loss = getattr(out, "loss", out)
        return {"loss": self.scalar(loss), "grad": self.grad(loss, inputs["logp"])}
