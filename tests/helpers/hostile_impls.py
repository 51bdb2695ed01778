"""Implementations that try to steer the conformance verdict (tests/test_conformance_hostile.py).

Each one records the processes it starts in the file named by ESPO_HOSTILE_PIDS (one pid a
line), so that a test can check that none outlives the runner.
"""

import os
import sys
import time
import types

import espo_ref

PIDS = os.environ.get("ESPO_HOSTILE_PIDS")


def _record(pid: int) -> None:
    if PIDS:
        with open(PIDS, "a") as f:
            f.write(f"{pid}\n")


def stack_walker(*args):
    """Looks up the call stack for the runner's case and returns its expected outputs."""
    frame = sys._getframe(1)
    while frame is not None:
        for value in frame.f_locals.values():
            expected = getattr(value, "expected", None)
            if isinstance(expected, dict) and "loss" in expected:
                return types.SimpleNamespace(**{k: v for k, v in expected.items() if k != "error"})
        frame = frame.f_back
    return types.SimpleNamespace(loss=42.0, grad=args[0] * 0.0)


def forty_two(*args):
    """The loss the patching modules pass off as right."""
    return types.SimpleNamespace(loss=42.0, grad=args[0] * 0.0)


def forks_child(*args):
    """A correct loss that leaves a forked child alive, holding every descriptor it inherited."""
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    _record(pid)
    return espo_ref.espo_loss(*args)


def detached_daemon(*args):
    """A correct loss that leaves a daemon behind: double fork, its own session, the pipes kept."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(3600)
            os._exit(0)
        os.write(write_end, f"{grandchild}\n".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    _record(int(os.read(read_end, 64)))
    os.close(read_end)
    os.close(write_end)
    return espo_ref.espo_loss(*args)


def forges_reply(*args):
    """Writes a torn message onto the worker's answer descriptor, then returns a correct loss."""
    answer_fd = int(sys.argv[-1])
    os.write(answer_fd, b"\x00\x00\x00\x10{\"id\": 1, \"outc")
    return espo_ref.espo_loss(*args)


def forges_answer(*args):
    """Writes a well-formed reply with made-up outputs for a question not asked, then a correct loss."""
    import json
    import struct

    answer_fd = int(sys.argv[-1])
    body = json.dumps({"id": 10**9, "outcome": {"kind": "outputs", "outputs": {}, "error_type": "",
                                               "message": "", "traceback": ""}}).encode()
    os.write(answer_fd, struct.pack(">I", len(body)) + body)
    return espo_ref.espo_loss(*args)


def hangs_for_sigterm(*args):
    """Tells the test it is running (its pid in ESPO_HOSTILE_PIDS), then hangs until killed."""
    _record(os.getpid())
    child = os.fork()
    if child == 0:
        os.setsid()
        time.sleep(3600)
        os._exit(0)
    _record(child)
    time.sleep(3600)


def signals_the_runner(*args):
    """Sends SIGTERM to the runner (the guard's parent) from inside the call, then hangs."""
    import signal

    guard = os.getppid()
    with open(f"/proc/{guard}/stat", "rb") as f:
        stat = f.read()
    runner = int(stat[stat.rfind(b")") + 2:].split()[1])
    _record(os.getpid())
    os.kill(runner, signal.SIGTERM)
    time.sleep(3600)
