"""The VM child process: builds the experiment's VM and answers the parent's requests.

Run as ``python -m kvmctl.experiment.vmchild <parent pid>``. Requests and
replies are the dataclasses of :mod:`kvmctl.experiment.vmproto`, pickled over
stdin and stdout; each request type has one handler in ``HANDLERS``. The child
joins the experiment's cgroup (the parent moves it there) before it maps
guest memory, so every guest page is charged there.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, BinaryIO

from kvmctl import libc
from kvmctl.errors import GuestError, KvmctlError, UsageError
from kvmctl.experiment import vmproto as proto
from kvmctl.guest.machine import EpochResult, GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.units import HUGE_2M, PAGE_SIZE
from kvmctl.vocab import dump_stacks_on_signal


def _die_with_parent(parent_pid: int) -> None:
    """Never outlive the controller, even one killed with SIGKILL.

    EOF on stdin ends the request loop, but not a guest busy in an epoch;
    PR_SET_PDEATHSIG kills us when the parent's thread that started us dies.
    A parent already gone before the prctl is caught by the ppid check.
    """
    libc.prctl(libc.PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)


class EpochLoop(threading.Thread):
    """Runs the machine's next epoch over and over until stopped and sums the runs up."""

    def __init__(self, machine: GuestMachine, pattern: Pattern, write: bool, seed: int):
        super().__init__(name="kvmctl-epoch-loop", daemon=True)
        self.machine, self.pattern, self.write, self.seed = machine, pattern, write, seed
        self.summary = proto.LoopSummary(str(pattern), write, seed, epoch=machine.next_epoch)
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._progress = threading.Condition()
        self._ended = False

    def run(self) -> None:
        s = self.summary
        try:
            while not self._halt.is_set():
                r = self.machine.run_epoch(self.pattern, self.write, self.seed, epoch=s.epoch)
                with self._progress:
                    s.start_ns = s.start_ns or r.start_ns
                    s.end_ns = r.end_ns
                    s.runs += 1
                    s.touches += r.touches
                    s.guest_seconds += r.guest_seconds
                    self._progress.notify_all()
        except BaseException as err:  # noqa: BLE001 - re-raised by stop()
            self.error = err
        finally:
            with self._progress:
                self._ended = True
                self._progress.notify_all()

    def wait_runs(self, n: int) -> None:
        """Return once the loop ran its epoch ``n`` times (the guest really runs), or raise what ended it first."""
        with self._progress:
            self._progress.wait_for(lambda: self.summary.runs >= n or self._ended)
            if self.summary.runs >= n:
                return
        self.stop()  # raises the loop's error

    def stop(self) -> proto.LoopSummary:
        self._halt.set()
        self.join()
        if self.error:
            raise self.error
        return self.summary


# Test hook, documented in docs/reliability.md: KVMCTL_TEST_PAYLOAD=faults:<mode> makes the
# experiment's VM run the `faults` payload, so tests reach the guest-fault paths end to end.
_FAULT_MODES = {"ud": 0, "mmio": 1, "pf": 2, "spin": 3, "triple": 0}
_UNMAPPED_GVA = 0x2_0000_0000  # 8 GiB: no page-table entry maps it


def _test_payload(spec: MachineSpec) -> tuple[MachineSpec, Callable[[GuestMachine], None]]:
    """``spec`` as KVMCTL_TEST_PAYLOAD wants it, and what to do to the built machine before it starts."""
    text = os.environ.get("KVMCTL_TEST_PAYLOAD")
    if not text:
        return spec, lambda machine: None
    payload, _, mode = text.partition(":")
    if payload != "faults" or mode not in _FAULT_MODES:
        raise UsageError(f"KVMCTL_TEST_PAYLOAD={text!r} is not faults:<mode>",
                         f"unset it, or use one of faults:{', faults:'.join(_FAULT_MODES)}")
    spec = replace(spec, payload="faults", mmio_hole=HUGE_2M if mode == "mmio" else 0)

    def misbehave(machine: GuestMachine) -> None:
        arg1 = {"mmio": machine.mmio_gpa + 0x1238, "pf": _UNMAPPED_GVA}.get(mode, 0)
        for mb in machine.mailboxes:
            mb.arg0, mb.arg1 = _FAULT_MODES[mode], arg1
        if mode == "triple":  # no usable IDT: #UD -> #GP -> #DF -> shutdown
            for vcpu in machine.vm.vcpus:
                sregs = vcpu.get_sregs()
                sregs.idt.limit = 0
                vcpu.set_sregs(sregs)

    return spec, misbehave


class VmChild:
    """The child's state between requests: the machine, and the epoch loop while one runs."""

    def __init__(self) -> None:
        self.machine: GuestMachine | None = None
        self.loop: EpochLoop | None = None

    def build(self, msg: proto.Build) -> proto.Built:
        if msg.nice:  # before any vCPU thread exists: threads inherit their creator's nice value
            os.setpriority(os.PRIO_PROCESS, 0, msg.nice)
        if msg.cpus:  # likewise inherited: every vCPU thread runs on these CPUs
            os.sched_setaffinity(0, msg.cpus)
        spec, misbehave = _test_payload(msg.spec)
        m = self.machine = GuestMachine(spec, epoch_timeout=msg.epoch_timeout)
        misbehave(m)
        m.start()
        return proto.Built(os.getpid(), m.vcpu_thread_ids, m.tsc_hz, m.total_pages, list(m.data_memslots),
                           [b.fd for b in m.backings], list(m.regions))

    def run_epoch(self, msg: proto.RunEpoch) -> EpochResult:
        return self._machine().run_epoch(Pattern.parse(msg.pattern), msg.write, msg.seed)

    def start_loop(self, msg: proto.StartLoop) -> None:
        loop = EpochLoop(self._machine(), Pattern.parse(msg.pattern), msg.write, msg.seed)
        loop.start()
        loop.wait_runs(msg.min_runs)  # a loop that ended raises here and is not kept
        self.loop = loop

    def stop_loop(self, msg: proto.StopLoop) -> proto.LoopSummary:
        loop, self.loop = self.loop, None
        if loop is None:
            raise UsageError("no epoch loop is running", "send StartLoop first")
        return loop.stop()

    def read_stats(self, msg: proto.ReadStats) -> dict[str, Any]:
        return self._machine().vm_stats()

    def host_touch(self, msg: proto.HostTouch) -> None:
        # What the nested experiment ages before any nested guest ran: mapped, never touched by a guest.
        for b in self._machine().backings:
            b.view()[::PAGE_SIZE] = 1

    def sync_memory(self, msg: proto.SyncMemory) -> None:
        for b in self._machine().backings:
            if b.fd >= 0:
                os.fsync(b.fd)

    def finish(self, msg: proto.Finish) -> None:
        if self.machine:
            self.machine.finish()
        self.close()

    def close(self) -> None:
        loop, self.loop = self.loop, None
        if loop:
            loop._halt.set()  # what ended it was answered already, or no one is left to ask
            loop.join()
        if self.machine:
            self.machine.close()
            self.machine = None

    def _machine(self) -> GuestMachine:
        if self.machine is None:
            raise UsageError("the VM is not built yet", "send Build first")
        return self.machine


HANDLERS: dict[type, Callable[[VmChild, Any], Any]] = {
    proto.Build: VmChild.build,
    proto.RunEpoch: VmChild.run_epoch,
    proto.StartLoop: VmChild.start_loop,
    proto.StopLoop: VmChild.stop_loop,
    proto.ReadStats: VmChild.read_stats,
    proto.HostTouch: VmChild.host_touch,
    proto.SyncMemory: VmChild.sync_memory,
    proto.Finish: VmChild.finish,
}


def _failed(err: BaseException) -> proto.Failed:
    if isinstance(err, KvmctlError):
        return proto.Failed(type(err), err.message, err.hint, int(err.exit_code), getattr(err, "registers", {}))
    return proto.Failed(None, f"VM process: {type(err).__name__}: {err}",
                        "a kvmctl bug; please report it with the command line")


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until Finish, end of input, or a guest fault (after which the VM is unusable)."""
    child = VmChild()
    try:
        while True:
            try:
                msg = pickle.load(requests)
            except EOFError:
                return
            try:
                reply: Any = HANDLERS[type(msg)](child, msg)
            except Exception as err:  # noqa: BLE001 - handed to the parent, which raises it
                reply = _failed(err)
            pickle.dump(reply, replies)
            replies.flush()
            if isinstance(msg, proto.Finish) or (isinstance(reply, proto.Failed) and reply.kind is GuestError):
                return
    finally:
        child.close()


def main(parent_pid: int | None = None) -> int:
    # The parent handles Ctrl-C and tells us to stop; a terminal's SIGINT
    # to the whole process group must not kill the VM mid-report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dump_stacks_on_signal()
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    replies = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the reply pipe
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else None))
