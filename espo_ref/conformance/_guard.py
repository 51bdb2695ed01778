"""[CONF-ISOLATION] The guard between the runner and a worker: it starts the worker and, when told
to or when the runner goes away, kills the worker and every process it left behind.

Run by path with the standard library only (``python -I _guard.py CTRL STATUS FDS -- CMD...``), so
that nothing of the implementation's can be imported into it. It makes itself the "child
subreaper" of its descendants (Linux): a grandchild whose parent died, even in its own session,
is re-parented to the guard instead of init, where the guard finds and kills it. Elsewhere only
the worker's process group can be killed.

Control pipe (runner -> guard): the word ``kill``, or end of file (the runner died): kill
everything and exit. Status pipe (guard -> runner): ``pid N`` once the worker runs, then
``exit CODE`` once the worker and all its descendants are gone (CODE < 0: killed by signal -CODE).
"""

import ctypes
import os
import select
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc; empty where there is none)."""
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            out.append(int(entry))
    return out


EXITED: dict[int, int] = {}  # pid -> exit code (negative: the signal) of every child reaped


def reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        EXITED[pid] = os.waitstatus_to_exitcode(status)


def kill_all(worker_pid: int) -> None:
    """SIGKILL the worker's process group, then every descendant re-parented to the guard, until none is left."""
    try:
        os.killpg(worker_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    me = os.getpid()
    for _ in range(10_000):  # a fork loop re-parents new orphans while we kill: bounded, not endless
        reap()
        left = children(me)
        if not left:
            return
        for pid in left:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def main(argv: list[str]) -> int:
    ctrl, status = int(argv[1]), int(argv[2])
    fds = [int(fd) for fd in argv[3].split(",") if fd]
    command = argv[argv.index("--") + 1:]
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: None)  # the runner's word on the control pipe decides
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    err = sys.stderr.fileno()
    worker = subprocess.Popen(command, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=err, start_new_session=True)
    for fd in fds:
        os.close(fd)
    os.write(status, f"pid {worker.pid}\n".encode())
    try:
        exited = os.pidfd_open(worker.pid)
    except (AttributeError, OSError):
        exited = None
    while worker.pid not in EXITED:
        ready, _, _ = select.select([ctrl] + ([exited] if exited is not None else []), [], [], 0.1)
        if ctrl in ready:
            try:
                word = os.read(ctrl, 64)
            except OSError:
                word = b""
            if not word or b"kill" in word:
                break
        reap()  # the worker, and orphans re-parented here
    kill_all(worker.pid)
    while worker.pid not in EXITED:
        try:
            _, status = os.waitpid(worker.pid, 0)
            EXITED[worker.pid] = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            EXITED.setdefault(worker.pid, -signal.SIGKILL)
    code = worker.returncode = EXITED[worker.pid]
    try:
        os.write(status, f"exit {code}\n".encode())
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
