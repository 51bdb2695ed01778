"""[CONF-ISOLATION] How the runner calls an implementation: in this process, or in a worker process.

In a worker (the command line's default) a ``sys.exit``, a hang, a crash, an out-of-memory kill,
a forked child or a malformed reply ends that case as an ERROR, never the run: the parent waits
at most ``timeout`` seconds for the import and for each case, then kills the worker and every
process it started, and starts a fresh one for the next case. The worker is told a case's
inputs and config only; the expected outputs, the comparison and the verdict stay in the parent
(specs/conformance.md, "Threat model").
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._device import torch_device
from ..errors import ESPOInputError
from .adapters import ADAPTERS, BadResult, ImplementationExited, ImplementationRaised, TrackedImpl
from .arrays import decode, encode
from .engines import ENGINE_ADAPTERS, before_import, engine_adapter
from .errors import SetupError
from .functions import FIELD_ORDER, FUNCTIONS
from .golden import GoldenCase


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
    "timeout", "died" (the worker process ended), "protocol" (the worker's reply was malformed),
    "leftover" (the implementation left processes running), or "harness" (the adapter or runner failed).
    """

    kind: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error_type: str = ""
    message: str = ""
    traceback: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "outputs": _encode_outputs(self.outputs), "error_type": self.error_type,
                "message": self.message, "traceback": self.traceback}


def _encode_outputs(outputs: dict) -> dict:
    out = {}
    for name, value in outputs.items():
        if name == "metrics":
            out[name] = {k: encode(np.asarray(v, dtype=np.float64)) for k, v in value.items()}
        else:
            out[name] = encode(value)
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
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the current folder, as `python -m` has it (conform and explain alike)
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
    """"torch" when the implementation's module imports torch, or the function's own code does
    (``import torch`` inside it), else "numpy"."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    names = vars(module).values() if module is not None else ()
    if any(getattr(v, "__name__", None) == "torch" for v in names):
        return "torch"
    target = getattr(fn, "__func__", fn)
    code = getattr(getattr(target, "fn", target), "__code__", None)
    return "torch" if code is not None and _names_torch(code) else "numpy"


def _names_torch(code, depth: int = 0) -> bool:
    if any(n == "torch" or n.startswith("torch.") for n in code.co_names):
        return True
    return depth < 4 and any(_names_torch(c, depth + 1) for c in code.co_consts if hasattr(c, "co_names"))


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
    if fn is None:
        before_import(target.adapter)  # an engine's shim, before its code loads
        fn = load_object(target.impl)
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
        adapter_class = engine_adapter(adapter)  # an engine's: espo_ref.conformance.engines.<engine>
        if adapter_class is None:
            raise SetupError(f"--adapter must be one of {', '.join(sorted(set(ADAPTERS) | set(ENGINE_ADAPTERS)))} or "
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
#
# Three processes: the runner (this module's WorkerExecutor: the cases, the answers, the
# verdict), a guard (_guard.py: standard library only, kills what the worker leaves behind)
# and the worker (worker_main: imports the implementation and calls it on questions).
# The worker gets a question (inputs, config, dtype), never an answer; every wait of the
# runner has a deadline and none depends on a pipe being closed by a child.

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 2**20  # bytes of one message; a longer one is the implementation's fault
MAX_ELEMENTS = 2**25  # elements of one returned array
KILL_WAIT = 10.0  # seconds the guard gets to kill and reap everything
OUTCOME_KINDS = ("outputs", "raised", "bad_result", "exited", "harness")  # what a worker may report
GUARD = Path(__file__).resolve().with_name("_guard.py")


class ProtocolError(Exception):
    """A message from the worker that is not what the protocol allows."""


def _frame(obj) -> bytes:
    data = json.dumps(obj, allow_nan=False).encode()
    return _HEADER.pack(len(data)) + data


def _send(stream, obj) -> None:
    """Worker side: one message on a blocking stream."""
    stream.write(_frame(obj))
    stream.flush()


def _recv(stream):
    """Worker side: one message from a blocking stream; None at its end."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(header)
    data = stream.read(n)
    if len(data) < n:
        return None
    return json.loads(data)


def _str(value, what: str, max_len: int = 1 << 16) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} is a {type(value).__name__}, not a string")
    return value[:max_len]


def outcome_from_reply(reply, case_number: int) -> Outcome:
    """[CONF-ISOLATION] The worker's reply to question ``case_number``, checked field by field
    (ProtocolError names what is wrong): the parent never trusts the shape of a message."""
    if not isinstance(reply, dict) or set(reply) != {"id", "outcome"}:
        raise ProtocolError(f"a reply has the keys id and outcome; got {_keys(reply)}")
    if reply["id"] != case_number:
        raise ProtocolError(f"a reply to question {reply['id']!r} came while question {case_number} was asked")
    obj = reply["outcome"]
    if not isinstance(obj, dict) or set(obj) != {"kind", "outputs", "error_type", "message", "traceback"}:
        raise ProtocolError(f"an outcome has the keys kind, outputs, error_type, message, traceback; got {_keys(obj)}")
    kind = obj["kind"]
    if kind not in OUTCOME_KINDS:
        raise ProtocolError(f"outcome kind {str(kind)[:50]!r} is not one of {', '.join(OUTCOME_KINDS)}")
    outputs = obj["outputs"]
    if not isinstance(outputs, dict) or (kind != "outputs" and outputs):
        raise ProtocolError("outputs must be a dict (empty unless kind is outputs)")
    allowed = set(FIELD_ORDER)
    decoded: dict[str, Any] = {}
    for name, value in outputs.items():
        if name not in allowed:
            raise ProtocolError(f"output {str(name)[:50]!r} is not one of {', '.join(FIELD_ORDER)}")
        try:
            if name == "metrics":
                if not isinstance(value, dict) or len(value) > 1000:
                    raise ValueError("metrics must be a dict of at most 1000 encoded numbers")
                metrics = {}
                for key, item in value.items():
                    arr = decode(item, MAX_ELEMENTS)
                    if arr.size != 1 or arr.dtype.kind != "f":
                        raise ValueError(f"metrics[{str(key)[:50]!r}] is not one float")
                    metrics[_str(key, "a metric's name", 200)] = float(arr.reshape(()))
                decoded[name] = metrics
            else:
                decoded[name] = decode(value, MAX_ELEMENTS)
        except (ValueError, ProtocolError) as exc:
            raise ProtocolError(f"output {name}: {exc}") from None
    return Outcome(kind, decoded, _str(obj["error_type"], "error_type", 200), _str(obj["message"], "message"),
                   _str(obj["traceback"], "traceback"))


def _keys(obj) -> str:
    return str(sorted(map(str, obj))[:10]) if isinstance(obj, dict) else f"a {type(obj).__name__}"


def check_info(info, target: Target) -> dict:
    """The worker's description of what it resolved, checked (the function asked for must be the one run)."""
    want = {"function": str, "adapter": str, "backend": str, "provides": (list, type(None)),
            "known_differences": (str, type(None)), "impl_version": (str, type(None))}
    if not isinstance(info, dict) or set(info) != set(want):
        raise ProtocolError(f"the worker's info has the keys {', '.join(want)}; got {_keys(info)}")
    for key, kind in want.items():
        if not isinstance(info[key], kind):
            raise ProtocolError(f"the worker's info {key} is a {type(info[key]).__name__}")
    if info["function"] not in FUNCTIONS or (target.function is not None and info["function"] != target.function):
        raise ProtocolError(f"the worker resolved function {info['function'][:50]!r}, not {target.function!r}")
    if info["backend"] not in ("numpy", "torch"):
        raise ProtocolError(f"the worker chose backend {info['backend'][:50]!r}")
    if info["provides"] is not None and not all(isinstance(f, str) for f in info["provides"]):
        raise ProtocolError("the worker's info provides is not a list of names")
    return info


def _child_env() -> dict[str, str]:
    """The parent's import path and folder, so the worker imports what the parent could."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in [os.getcwd()] + sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


_LIVE: "weakref.WeakSet[WorkerExecutor]" = weakref.WeakSet()


@atexit.register
def _close_live_workers() -> None:
    for executor in list(_LIVE):
        executor.close()


class WorkerExecutor:
    """[CONF-ISOLATION] Calls the implementation in a worker process, at most ``timeout`` seconds per
    case and for the import; kills the worker and everything it started after a timeout, a death,
    a malformed reply, and at close (also at interpreter exit)."""

    isolated = True

    def __init__(self, target: Target, timeout: float = 60.0):
        self.target = target
        self.timeout = float(timeout)
        self.info: dict = {}
        self.questions = 0
        self._running = False
        self._start()

    # the processes -------------------------------------------------------------------------

    def _start(self) -> None:
        q_r, q_w = os.pipe()  # questions: runner -> worker
        a_r, a_w = os.pipe()  # answers: worker -> runner
        c_r, c_w = os.pipe()  # control: runner -> guard
        s_r, s_w = os.pipe()  # status: guard -> runner
        worker = [sys.executable, "-m", "espo_ref.conformance.worker", str(q_r), str(a_w)]
        try:
            self.guard = subprocess.Popen(
                [sys.executable, "-I", str(GUARD), str(c_r), str(s_w), f"{q_r},{a_w}", "--", *worker],
                pass_fds=(q_r, a_w, c_r, s_w), stdin=subprocess.DEVNULL, env=_child_env(),
                start_new_session=True)
        finally:
            for fd in (q_r, a_w, c_r, s_w):
                os.close(fd)
        self.q_w, self.a_r, self.c_w, self.s_r = q_w, a_r, c_w, s_r
        for fd in (q_w, a_r, s_r):
            os.set_blocking(fd, False)
        self.answers = bytearray()
        self.status = bytearray()
        self.worker_pid: int | None = None
        self.worker_code: int | None = None
        self._running = True
        _LIVE.add(self)
        deadline = time.monotonic() + self.timeout
        try:
            self._write(_frame({"setup": self.target.__dict__}), deadline)
            reply = self._read(deadline)
        except _Gone as gone:
            self._stop()
            raise SetupError(f"--impl {self.target.impl}: the worker process ended while importing it "
                             f"({gone.how})") from None
        except _Late:
            self._stop()
            raise SetupError(f"--impl {self.target.impl}: importing it took longer than {self.timeout:g} s "
                             "(--timeout); the worker was killed") from None
        except ProtocolError as exc:
            self._stop()
            raise SetupError(f"--impl {self.target.impl}: the worker's first message is malformed: {exc}") from None
        if isinstance(reply, dict) and set(reply) == {"setup_error"} and isinstance(reply["setup_error"], str):
            self._stop()
            raise SetupError(reply["setup_error"][:2000])
        try:
            self.info = check_info(reply.get("info") if isinstance(reply, dict) and set(reply) == {"info"}
                                   else reply, self.target)
        except ProtocolError as exc:
            self._stop()
            raise SetupError(f"--impl {self.target.impl}: {exc}") from None

    def _stop(self) -> None:
        """Kill the worker and every process it left (through the guard), reap the guard, close the pipes."""
        if not self._running:
            return
        self._running = False
        _LIVE.discard(self)
        try:
            os.write(self.c_w, b"kill")
        except OSError:
            pass
        deadline = time.monotonic() + KILL_WAIT
        try:
            while self.worker_code is None:
                self._poll_status(deadline)
        except (_Late, _Gone):
            pass
        if self.guard.poll() is None:
            try:
                self.guard.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if self.guard.poll() is None or self.worker_code is None:
            # the guard was killed or hangs: kill what can still be named
            for pgid in (self.worker_pid, self.guard.pid):
                if pgid:
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            self.guard.wait()
        for fd in (self.q_w, self.a_r, self.c_w, self.s_r):
            try:
                os.close(fd)
            except OSError:
                pass

    # pipes with deadlines ------------------------------------------------------------------

    def _poll_status(self, deadline: float) -> None:
        """Wait for a line from the guard (pid, exit) until ``deadline``."""
        self._select([self.s_r], deadline)
        self._drain_status()

    def _drain_status(self) -> None:
        while True:
            try:
                chunk = os.read(self.s_r, 4096)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                if self.worker_code is None:
                    self.worker_code = -signal.SIGKILL  # the guard itself is gone
                break
            self.status += chunk
        *lines, rest = bytes(self.status).split(b"\n")
        self.status = bytearray(rest)
        for line in lines:
            word, _, value = line.decode("ascii", "replace").partition(" ")
            if word == "pid" and value.strip().isdigit():
                self.worker_pid = int(value)
            elif word == "exit":
                try:
                    self.worker_code = int(value)
                except ValueError:
                    self.worker_code = -signal.SIGKILL

    @staticmethod
    def _select(read: list[int], deadline: float, write: tuple[int, ...] = ()) -> list[int]:
        """The descriptors ready (readable among ``read``, writable among ``write``); _Late after ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Late()
        ready_read, ready_write, _ = select.select(read, list(write), [], left)
        return ready_read + ready_write

    def _gone(self) -> "_Gone":
        code = self.worker_code
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return _Gone(how)

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._drain_status()
            if self.worker_code is not None:
                raise self._gone()
            if self.q_w not in self._select([self.s_r], deadline, write=(self.q_w,)):
                continue  # the guard spoke (the worker may have ended): checked above
            try:
                n = os.write(self.q_w, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                self._poll_until_exit(deadline)
                raise self._gone()
            view = view[n:]

    def _poll_until_exit(self, deadline: float) -> None:
        try:
            while self.worker_code is None:
                self._poll_status(min(deadline, time.monotonic() + KILL_WAIT))
        except _Late:
            pass

    def _read(self, deadline: float):
        """One message from the worker: within ``deadline``; _Gone when the worker ended first."""
        while True:
            message = self._take_frame()
            if message is not None:
                return message
            if self.worker_code is not None:
                self._read_available()  # a reply written just before the exit
                message = self._take_frame()
                if message is not None:
                    return message
                raise self._gone()
            ready = self._select([self.a_r, self.s_r], deadline)
            if self.a_r in ready:
                self._read_available()
            if self.s_r in ready:
                self._drain_status()

    def _read_available(self) -> None:
        while len(self.answers) <= MAX_FRAME + _HEADER.size:
            try:
                chunk = os.read(self.a_r, 1 << 20)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self.answers += chunk

    def _take_frame(self):
        if len(self.answers) < _HEADER.size:
            return None
        (n,) = _HEADER.unpack(self.answers[:_HEADER.size])
        if n > MAX_FRAME:
            raise ProtocolError(f"a message of {n} bytes (the limit is {MAX_FRAME})")
        if len(self.answers) < _HEADER.size + n:
            return None
        data = bytes(self.answers[_HEADER.size:_HEADER.size + n])
        del self.answers[:_HEADER.size + n]
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"a message that is not JSON ({type(exc).__name__})") from None

    # the calls -----------------------------------------------------------------------------

    def run(self, case: GoldenCase) -> Outcome:
        """One case: its question to the worker, the worker's checked reply as an Outcome."""
        if not self._running:
            self._start()
        self.questions += 1
        number = self.questions
        deadline = time.monotonic() + self.timeout
        try:
            self._write(_frame({"id": number, "case": question(case)}), deadline)
            outcome = outcome_from_reply(self._read(deadline), number)
            left = self._leftovers()
            if left:
                self._stop()
                return Outcome("leftover", error_type="LeftoverProcess",
                               message=f"the implementation left {len(left)} process(es) running after the call "
                                       f"(pid {', '.join(map(str, left[:5]))}); they and the worker were killed")
            return outcome
        except _Late:
            self._stop()
            return Outcome("timeout", error_type="Timeout",
                           message=f"no answer within {self.timeout:g} s (--timeout); the worker and every "
                                   "process it started were killed")
        except _Gone as gone:
            self._stop()
            return Outcome("died", error_type="WorkerDied",
                           message=f"the worker process ended during the call ({gone.how}): a crash, an "
                                   "out-of-memory kill or os._exit in the implementation")
        except ProtocolError as exc:
            self._stop()
            return Outcome("protocol", error_type="ProtocolError",
                           message=f"the worker's reply is malformed: {exc}; the worker was killed")

    def _leftovers(self) -> list[int]:
        """The processes the implementation started and left: children of the worker, and orphans
        the guard adopted (Linux; elsewhere they are killed with the worker's group at close)."""
        if self.worker_pid is None or not sys.platform.startswith("linux"):
            return []
        from ._guard import children

        return children(self.worker_pid) + [p for p in children(self.guard.pid) if p != self.worker_pid]

    def close(self) -> None:
        if self._running:
            try:
                self._write(_frame({"stop": True}), time.monotonic() + 1.0)
            except (_Late, _Gone):
                pass
        self._stop()


class _Late(Exception):
    """A deadline passed."""


class _Gone(Exception):
    """The worker ended (``how``: its exit status or signal)."""

    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


@dataclass
class ProbeCase(GoldenCase):
    """A case called with its inputs in another order (a calling-convention probe, [CONF-CALL])."""

    call_order: tuple[str, ...] | None = None


def question(case: GoldenCase) -> dict:
    """[CONF-ISOLATION] What the worker is told of a case: its function, dtype, config, keyword
    arguments, inputs and (for a calling-convention probe) the order of the inputs. Never the
    case id, clauses or expected outputs."""
    out = {"function": case.function, "dtype": case.dtype, "config": case.config, "kwargs": case.kwargs,
           "inputs": {k: encode(v, case.dtype if v.dtype.kind == "f" else None) for k, v in case.inputs.items()}}
    order = getattr(case, "call_order", None)
    if order is not None:
        out["call_order"] = list(order)
    return out


def case_of_question(obj: dict) -> GoldenCase:
    return ProbeCase("question", obj["function"], [], obj["dtype"], {k: decode(v) for k, v in obj["inputs"].items()},
                     obj["config"], dict(obj["kwargs"]), {}, "question",
                     call_order=tuple(obj["call_order"]) if "call_order" in obj else None)


def worker_main(argv: list[str] | None = None) -> int:
    """The worker: questions on one descriptor, answers on another (both named in argv); the
    implementation's own prints go to stderr and its stdin is empty, so it cannot touch the protocol
    by accident."""
    argv = sys.argv[1:] if argv is None else argv
    proto_in = os.fdopen(int(argv[0]), "rb")
    proto_out = os.fdopen(int(argv[1]), "wb", buffering=0)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
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
        outcome = call(adapter, case_of_question(msg["case"]))
        try:
            _send(proto_out, {"id": msg["id"], "outcome": outcome.to_json()})
        except (TypeError, ValueError) as exc:
            _send(proto_out, {"id": msg["id"], "outcome": Outcome(
                "harness", error_type=type(exc).__name__, message=f"outputs not serialisable: {exc}").to_json()})
