"""Child processes of ``youri data`` that never outlive it.

datatrove's local executor starts a ``multiprocess`` manager (always), and with ``workers > 1`` a
forkserver, a resource tracker and the worker pool. None of them watches its parent: after a
``kill -9`` of ``youri data`` they ran on, orphaned, until their tasks ended (the manager forever), and
a terminal's Ctrl-C reached every worker, each printing its own ``KeyboardInterrupt`` traceback.

* ``children_die_with_us()``: while active, every child this process forks (the manager) gets
  ``PR_SET_PDEATHSIG``: the kernel kills it when its parent dies, however the parent dies.
* ``run_in_process_group(fn)``: runs ``fn`` in a forked child that leads a process group of its own,
  dies with us (``PDEATHSIG``) and then takes its whole group along (every process the executor
  starts, forkserver workers included, inherits the group). A Ctrl-C in the terminal reaches only
  ``youri data``'s own group, which stops the child's group and reports one line.

Linux only (``prctl``); elsewhere these are plain calls without the death guarantees.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from typing import Callable, Iterator

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_active = False  # inherited by forked children: only forks inside ``children_die_with_us`` are guarded
_forking_pid = 0
_hooked = False
WAKE_S = 0.2
"""How often the waiting parent looks for a signal that another of its threads received."""


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def children_die_with_us() -> Iterator[None]:
    global _active, _hooked
    if not _hooked and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _hooked = True
    _active = True
    try:
        yield
    finally:
        _active = False


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    if _active and die_with_parent() and os.getppid() != _forking_pid:
        os._exit(1)  # the parent died between the fork and the prctl: nobody is left to signal us


def run_in_process_group(fn: Callable[[], None]) -> None:
    """``fn()`` in a forked child leading its own process group; raises if it fails or we are interrupted."""
    child = multiprocessing.get_context("fork").Process(target=_group_leader, args=(fn, os.getpid()))
    child.start()
    with contextlib.suppress(OSError):
        os.setpgid(child.pid, child.pid)  # also done by the child: whichever runs first wins the race
    try:
        while child.exitcode is None:
            # Never a bare join: the kernel may hand a Ctrl-C to any thread (tqdm's monitor, fsspec's loop), and
            # then nothing interrupts the main thread's waitpid; Python runs the handler in the main thread at
            # its next bytecode, which a timed wait reaches within WAKE_S.
            child.join(timeout=WAKE_S)
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or any other way out: the group goes with us
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)
        child.join()
        raise
    if child.exitcode:
        raise RuntimeError(f"the datatrove executor process failed (exit code {child.exitcode}); see its log above")


def _group_leader(fn: Callable[[], None], parent: int) -> None:
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    leader = os.getpid()

    def on_term(signum, frame) -> None:
        if os.getpid() == leader:  # a forked child (the manager) inherits this handler: not its job
            os.killpg(leader, signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    if die_with_parent(signal.SIGTERM) and os.getppid() != parent:
        os.killpg(leader, signal.SIGKILL)
    with children_die_with_us():
        fn()
