"""A process-wide LIFO stack of undo actions for every change kvmctl makes to the host.

Whoever changes host state (a cgroup limit, a kernel knob, a BPF attachment, a
cgroup directory) registers the undo right after the change succeeded::

    handle = cleanup.register("cgroup limit kvmctl-12-a", restore_limit)
    ...
    handle.release()          # undo now, e.g. at the end of a pass

``run_all()`` undoes whatever is still registered, newest first. It runs each
action once, keeps going past failures and returns them; it is idempotent and
is called from the CLI's error and signal paths and from ``atexit``.

Actions belong to the process that registered them: a forked child (the VM
runner) inherits the stack but never runs its parent's actions, or it would
remove the cgroup it is running in.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from typing import Callable

from kvmctl.errors import Interrupted

# Reentrant: a signal handler may run run_all() in the main thread while that
# thread is inside register() or release().
_lock = threading.RLock()
_stack: list[Handle] = []
_atexit_installed = False


@dataclass(frozen=True)
class CleanupFailure:
    name: str
    error: BaseException

    def __str__(self) -> str:
        return f"{self.name}: {self.error}"


class Handle:
    """One registered undo action; ``release()`` runs it early (once)."""

    def __init__(self, name: str, fn: Callable[[], object]):
        self.name = name
        self._fn: Callable[[], object] | None = fn
        self._pid = os.getpid()

    @property
    def pending(self) -> bool:
        return self._fn is not None

    def _take(self) -> Callable[[], object] | None:
        with _lock:
            fn, self._fn = self._fn, None
            if self in _stack:
                _stack.remove(self)
        return fn

    def release(self) -> None:
        """Run the action now and unregister it; exceptions reach the caller.

        An action a signal cut short (SIGINT/SIGTERM arrive as exceptions)
        stays registered in its place, so ``run_all()`` finishes it; one that
        failed on its own ran once and is not tried again.
        """
        if self._pid != os.getpid():
            return
        with _lock:
            index = _stack.index(self) if self in _stack else len(_stack)
        fn = self._take()
        if fn is None:
            return
        try:
            fn()
        except (Interrupted, KeyboardInterrupt):
            with _lock:
                self._fn = fn
                _stack.insert(min(index, len(_stack)), self)
            raise

    def discard(self) -> None:
        """Unregister without running (the change was undone another way)."""
        self._take()

    def __repr__(self) -> str:
        return f"Handle({self.name!r}, pending={self.pending})"


def register(name: str, fn: Callable[[], object]) -> Handle:
    """Push an undo action; it runs at the latest in ``run_all()``."""
    global _atexit_installed
    handle = Handle(name, fn)
    with _lock:
        _stack.append(handle)
        if not _atexit_installed:
            atexit.register(run_all)
            _atexit_installed = True
    return handle


def pending() -> list[str]:
    """Names of the actions still registered by this process, oldest first."""
    with _lock:
        return [h.name for h in _stack if h._pid == os.getpid()]


def run_all() -> list[CleanupFailure]:
    """Run every pending action of this process, newest first; never raises.

    A signal handler that raises (kvmctl.cli turns SIGINT/SIGTERM into an
    exception) may interrupt this loop anywhere; the interruption is recorded
    as a failure and the loop goes on with the actions still pending.
    """
    failures: list[CleanupFailure] = []
    me = os.getpid()
    while True:
        try:
            with _lock:
                mine = [h for h in _stack if h._pid == me]
                if not mine:
                    # Inherited entries of a parent process are dropped, not run.
                    _stack.clear()
                    return failures
                handle = mine[-1]
            fn = handle._take()
            if fn is not None:
                try:
                    fn()
                except BaseException as err:  # keep undoing the rest, even on KeyboardInterrupt
                    failures.append(CleanupFailure(handle.name, err))
        except BaseException as err:
            failures.append(CleanupFailure("cleanup (interrupted)", err))
