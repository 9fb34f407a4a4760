"""The experiment's VM runs in a child process; :class:`VmProcess` is the parent's handle on it.

Why a child: its guest memory is charged to the experiment's memory cgroup
and not to the controller (BCC and LLVM live there), and a wedged guest can
be killed without losing the trace. The requests and replies are the
dataclasses of :mod:`kvmctl.experiment.vmproto`; :mod:`kvmctl.experiment.vmchild`
answers them.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

from kvmctl.errors import ExitCode, GuestError, KvmctlError
from kvmctl.experiment import vmproto as proto
from kvmctl.guest.machine import EpochResult, MachineSpec

# Errors the child raised that the parent raises again as themselves: all construct as (message, hint).
_RERAISED = frozenset({"KvmctlError", "UsageError", "UnsupportedError", "PermissionDeniedError", "GuestMemoryError"})


class VmProcessError(KvmctlError):
    """An error the VM child reported, with its original exit code."""

    def __init__(self, failed: proto.Failed):
        super().__init__(failed.message, failed.hint)
        self.exit_code = ExitCode(failed.exit_code)
        self.registers = failed.registers
        self.kind = failed.kind.__name__ if failed.kind else None


def _raise(failed: proto.Failed) -> None:
    if failed.kind is GuestError:  # the same type as in-process, registers included
        raise GuestError(failed.message, failed.hint, failed.registers)
    if failed.kind is not None and failed.kind.__name__ in _RERAISED:
        raise failed.kind(failed.message, failed.hint)
    raise VmProcessError(failed)


class VmProcess:
    """Parent-side handle of the VM child. Always ``close()`` it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "kvmctl.experiment.vmchild", str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self.built: proto.Built | None = None
        self._looping = False

    def request(self, msg: Any) -> Any:
        """Send one request, return the child's reply (raising what the child raised)."""
        pickle.dump(msg, self.proc.stdin)
        self.proc.stdin.flush()
        try:
            reply = pickle.load(self.proc.stdout)
        except EOFError:
            code = self.proc.wait(timeout=5)
            raise KvmctlError(f"the VM process ended unexpectedly (exit status {code})",
                              "see its message above; the guest memory may exceed the host's") from None
        if isinstance(reply, proto.Failed):
            _raise(reply)
        return reply

    def build(self, spec: MachineSpec, epoch_timeout: float | None, nice: int = 0,
              cpus: frozenset[int] | None = None) -> proto.Built:
        self.built = self.request(proto.Build(spec, epoch_timeout, nice, cpus))
        return self.built

    def epoch(self, pattern: str, write: bool, seed: int = 0) -> EpochResult:
        return self.request(proto.RunEpoch(pattern, write, seed))

    def loop_start(self, pattern: str, write: bool, seed: int = 0, min_runs: int = 0) -> None:
        """Run the next epoch over and over in the child until :meth:`loop_stop`.

        With ``min_runs`` the call returns only once the loop ran its epoch that
        many times, so that whatever the caller does next meets a running guest.
        """
        self.request(proto.StartLoop(pattern, write, seed, min_runs))
        self._looping = True

    def loop_stop(self) -> proto.LoopSummary:
        self._looping = False
        return self.request(proto.StopLoop())

    def stats(self) -> dict[str, Any]:
        return self.request(proto.ReadStats())

    def host_touch(self) -> None:
        self.request(proto.HostTouch())

    def sync_memory(self) -> None:
        self.request(proto.SyncMemory())

    def backing_fd_path(self, i: int) -> str | None:
        """A path to data memslot ``i``'s backing file through the child's fd (for mincore), None if anonymous."""
        fd = self.built.backing_fds[i] if self.built else -1
        return f"/proc/{self.pid}/fd/{fd}" if fd >= 0 else None

    def close(self) -> None:
        """Finish politely if possible, else end the child we started (by its Popen handle)."""
        if self.proc.poll() is None:
            try:
                if self._looping:
                    self.loop_stop()
                self.request(proto.Finish())
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - fall through to a hard stop
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass
