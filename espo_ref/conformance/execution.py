"""[CONF-ISOLATION] How the runner calls an implementation: in this process, or in a worker process.

In a worker (the command line's default) a ``sys.exit``, a hang, a crash or an out-of-memory
kill inside the implementation ends that case as an ERROR, never the run: the parent waits at
most ``timeout`` seconds per case, then kills the worker and starts a fresh one for the next
case. The parent compares; the worker only calls (its outputs travel as JSON over a pipe).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._device import torch_device
from ..errors import ESPOInputError
from .adapters import ADAPTERS, BadResult, ImplementationExited, ImplementationRaised, TrackedImpl
from .arrays import decode, encode
from .functions import FUNCTIONS
from .golden import GoldenCase


class SetupError(Exception):
    """A usage or setup problem (exit status 2): bad arguments, an unimportable implementation,
    an unknown adapter, an unavailable device, unreadable golden or xfail files."""


@dataclass
class Target:
    """What to run: the implementation's import path and how to call it."""

    impl: str
    function: str | None = None
    adapter: str = "native"
    backend: str = "auto"
    device: str = "cpu"


@dataclass
class Outcome:
    """What one call of the implementation gave.

    kind: "outputs" (``outputs`` holds them), "raised" (the implementation raised),
    "bad_result" (it returned something unusable), "exited" (it called sys.exit),
    "timeout", "died" (the worker process ended), or "harness" (the adapter or runner failed).
    """

    kind: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error_type: str = ""
    message: str = ""
    traceback: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "outputs": _encode_outputs(self.outputs), "error_type": self.error_type,
                "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, obj: dict) -> "Outcome":
        return cls(obj["kind"], _decode_outputs(obj["outputs"]), obj["error_type"], obj["message"], obj["traceback"])


def _encode_outputs(outputs: dict) -> dict:
    out = {}
    for name, value in outputs.items():
        if name == "metrics":
            out[name] = {k: encode(np.asarray(v, dtype=np.float64)) for k, v in value.items()}
        else:
            out[name] = encode(value)
    return out


def _decode_outputs(obj: dict) -> dict:
    out: dict[str, Any] = {}
    for name, value in obj.items():
        if name == "metrics":
            out[name] = {k: float(decode(v)) for k, v in value.items()}
        else:
            out[name] = decode(value)
    return out


def _normalise(outputs) -> dict[str, Any]:
    """An adapter's outputs as numpy arrays (float64, int64 or bool) and a metrics dict."""
    if not isinstance(outputs, dict):
        raise BadResult(f"the adapter returned a {type(outputs).__name__}, not a dict of outputs")
    out: dict[str, Any] = {}
    for name, value in outputs.items():
        if name == "metrics":
            if not isinstance(value, dict):
                raise BadResult(f"metrics is a {type(value).__name__}, not a dict")
            metrics = {}
            for k, v in value.items():
                try:
                    metrics[str(k)] = float(v)
                except (TypeError, ValueError):
                    raise BadResult(f"metrics[{k!r}] is not a number: {v!r}") from None
            out[name] = metrics
            continue
        if value is None:
            raise BadResult(f"{name} is None")
        try:
            arr = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is a bad result
            raise BadResult(f"{name} is not an array: {type(value).__name__} ({exc})") from None
        if arr.dtype.kind == "b":
            out[name] = arr.astype(bool)
        elif arr.dtype.kind in "iu":
            out[name] = arr.astype(np.int64)
        elif arr.dtype.kind == "f":
            out[name] = arr.astype(np.float64)
        else:
            raise BadResult(f"{name} has dtype {arr.dtype}, not a number type")
    return out


# --- resolving what to run ----------------------------------------------------------------


def load_object(spec: str, what: str = "--impl") -> Any:
    """``package.module:attr`` (dots after the colon walk attributes); SetupError otherwise."""
    if not isinstance(spec, str) or ":" not in spec:
        raise SetupError(f"{what} must look like package.module:callable, got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except SystemExit as exc:
        raise SetupError(f"{what} {spec!r}: importing {module_name} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # noqa: BLE001 - any import failure is a setup error
        raise SetupError(f"{what} {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SetupError(f"{what} {spec!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise SetupError(f"{what} {spec!r} is not callable")
    return obj


def import_path(fn: Callable) -> str | None:
    """``module:qualname`` when importing it gives back ``fn`` (so a worker can load it)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - not importable: run in-process
        return None
    return f"{module}:{qualname}" if obj is fn else None


def detect_backend(fn: Callable) -> str:
    """"torch" when the implementation's module imports torch, else "numpy"."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    names = vars(module).values() if module is not None else ()
    return "torch" if any(getattr(v, "__name__", None) == "torch" for v in names) else "numpy"


def check_device(device: str) -> None:
    if device == "cpu":
        return
    if importlib.util.find_spec("torch") is None:
        raise SetupError(f"--device {device}: torch is not installed")
    try:
        torch_device(device)
    except ESPOInputError as exc:
        raise SetupError(str(exc)) from None


def resolve(target: Target, fn: Callable | None = None):
    """Load the implementation and build its adapter; returns (adapter, info).

    ``info`` holds the resolved function, adapter name, backend, what the adapter provides
    and the implementation's version. Every problem is a SetupError.
    """
    fn = load_object(target.impl) if fn is None else fn
    function = target.function
    if function is None:
        function = getattr(fn, "__name__", "espo_loss")
        if function not in FUNCTIONS:
            function = "espo_loss"
    if function not in FUNCTIONS:
        raise SetupError(f"--function must be one of {', '.join(sorted(FUNCTIONS))}; got {function!r}")
    adapter = target.adapter
    if ":" in adapter:  # package.module:AdapterClass, defined outside this package
        adapter_class = load_object(adapter, "--adapter")
    elif adapter in ADAPTERS:  # built in, or registered by the implementation's module on import
        adapter_class = ADAPTERS[adapter]
    else:
        if adapter == "verl" or adapter.startswith("verl-"):
            from . import verl_adapters  # noqa: F401 - registers the verl adapters

            adapter_class = ADAPTERS.get(adapter)
        else:
            adapter_class = None
        if adapter_class is None:
            raise SetupError(f"--adapter must be one of {', '.join(sorted(ADAPTERS))} or "
                             f"package.module:Class; got {adapter!r}")
    backend = target.backend
    if backend == "auto":
        backend = getattr(adapter_class, "backend_default", None) or detect_backend(fn)
    if backend not in ("numpy", "torch"):
        raise SetupError(f"--backend must be auto, numpy or torch; got {backend!r}")
    if backend == "numpy" and target.device != "cpu":
        raise SetupError(f"--device {target.device} needs --backend torch")
    check_device(target.device)
    try:
        runner = adapter_class(TrackedImpl(fn), function, backend, target.device)
    except SetupError:
        raise
    except Exception as exc:  # noqa: BLE001 - an adapter that cannot be built is a setup error
        raise SetupError(f"--adapter {adapter}: cannot build it for {function}: {type(exc).__name__}: {exc}") from exc
    provides = getattr(runner, "provides", None)
    info = {"function": function, "adapter": adapter, "backend": backend,
            "provides": list(provides) if provides is not None else None,
            "known_differences": getattr(runner, "known_differences", None),
            "impl_version": impl_version(target.impl)}
    return runner, info


def impl_version(impl: str) -> str | None:
    module = impl.split(":", 1)[0]
    top = module.split(".")[0]
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(top.replace("_", "-"))
        except PackageNotFoundError:
            return getattr(sys.modules.get(top), "__version__", None)
    except Exception:  # noqa: BLE001 - a version is informative only
        return None


def call(adapter, case: GoldenCase) -> Outcome:
    """Run one case through the adapter in this process and classify what happened."""
    try:
        return Outcome("outputs", _normalise(adapter.run(case)))
    except ImplementationRaised as exc:
        orig = exc.original
        tb = "".join(traceback.format_exception(type(orig), orig, orig.__traceback__, limit=-4))
        return Outcome("raised", error_type=type(orig).__name__, message=str(orig), traceback=tb)
    except ImplementationExited as exc:
        return Outcome("exited", error_type="SystemExit", message=str(exc))
    except BadResult as exc:
        return Outcome("bad_result", error_type="BadResult", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - everything else is the harness's fault
        return Outcome("harness", error_type=type(exc).__name__, message=str(exc),
                       traceback=traceback.format_exc(limit=-4))


class InProcessExecutor:
    """Calls the implementation in this process (no timeout: a hang hangs the run)."""

    isolated = False

    def __init__(self, target: Target, fn: Callable | None = None):
        self.adapter, self.info = resolve(target, fn)

    def run(self, case: GoldenCase) -> Outcome:
        return call(self.adapter, case)

    def close(self) -> None:
        pass


# --- the worker process -------------------------------------------------------------------

_HEADER = struct.Struct(">I")


def _send(stream, obj) -> None:
    data = json.dumps(obj, allow_nan=False).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(header)
    data = stream.read(n)
    if len(data) < n:
        return None
    return json.loads(data)


def _child_env() -> dict[str, str]:
    """The parent's import path, so the worker imports what the parent could."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class WorkerExecutor:
    """[CONF-ISOLATION] Calls the implementation in a worker process, at most ``timeout`` seconds per case."""

    isolated = True
    SETUP_TIMEOUT = 600.0  # importing torch and a user's package can take a while

    def __init__(self, target: Target, timeout: float = 60.0):
        self.target = target
        self.timeout = float(timeout)
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "espo_ref.conformance.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=_child_env(), start_new_session=True)
        self.replies: queue.Queue = queue.Queue()
        stdout = self.proc.stdout

        def read():
            while True:
                try:
                    msg = _recv(stdout)
                except Exception:  # noqa: BLE001 - a torn frame ends the stream
                    msg = None
                self.replies.put(msg)
                if msg is None:
                    return

        threading.Thread(target=read, daemon=True).start()
        _send(self.proc.stdin, {"setup": self.target.__dict__})
        reply = self._wait(self.SETUP_TIMEOUT)
        if reply is None or "setup_error" in reply:
            self._kill()
            if reply is None:
                raise SetupError(f"--impl {self.target.impl}: the worker process ended while importing "
                                 f"it (exit status {self.proc.returncode})")
            raise SetupError(reply["setup_error"])
        self.info = reply["info"]

    def _wait(self, timeout: float):
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            return "timeout"

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def run(self, case: GoldenCase) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            _send(self.proc.stdin, {"case": case.to_json()})
        except (BrokenPipeError, OSError):
            reply = None
        else:
            reply = self._wait(self.timeout)
        if reply == "timeout":
            self._kill()
            self.proc = None
            return Outcome("timeout", error_type="Timeout",
                           message=f"no answer within {self.timeout:g} s (--timeout); the worker was killed")
        if reply is None:
            code = self.proc.wait()
            self.proc = None
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            return Outcome("died", error_type="WorkerDied",
                           message=f"the worker process ended during the call ({how}): a crash, an "
                                   "out-of-memory kill or os._exit in the implementation")
        return Outcome.from_json(reply["outcome"])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                _send(self.proc.stdin, {"stop": True})
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        self.proc = None


def worker_main() -> int:
    """The worker: protocol frames on the original stdout; the implementation's own prints
    go to stderr so they cannot corrupt the protocol."""
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    adapter = None
    while True:
        msg = _recv(proto_in)
        if msg is None or msg.get("stop"):
            return 0
        if "setup" in msg:
            try:
                adapter, info = resolve(Target(**msg["setup"]))
                _send(proto_out, {"info": info})
            except SetupError as exc:
                _send(proto_out, {"setup_error": str(exc)})
                return 0
            except BaseException as exc:  # noqa: BLE001 - report, then stop
                _send(proto_out, {"setup_error": f"--impl {msg['setup']['impl']}: {type(exc).__name__}: {exc}"})
                return 0
            continue
        outcome = call(adapter, GoldenCase.from_json(msg["case"]))
        try:
            _send(proto_out, {"outcome": outcome.to_json()})
        except (TypeError, ValueError) as exc:
            _send(proto_out, {"outcome": Outcome("harness", error_type=type(exc).__name__,
                                                 message=f"outputs not serialisable: {exc}").to_json()})
