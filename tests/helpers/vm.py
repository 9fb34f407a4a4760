"""A VM for the host tests: kvmctl's own VM child process (VmProcess), in an experiment cgroup of its own.

The cgroup is joined before the child maps guest memory, so every page the
guest faults is charged there, as in an experiment.
"""

from __future__ import annotations

from contextlib import ExitStack

from kvmctl.cgroup import ExperimentCgroup, Memcg
from kvmctl.experiment.vmproc import VmProcess
from kvmctl.guest.machine import MachineSpec
from kvmctl.kvm import BackingKind
from kvmctl.placement import AUTO, resolve_placement
from kvmctl.kvm import Memslot
from kvmctl.trace.records import TraceTarget


class VmChild:
    """One vCPU, ``size`` bytes of data memory on ``backing``; always ``close()`` it.

    Placed as an experiment places its VM (nice -10, CPUs split from the ager's
    where there are enough): run ager passes inside ``with pinned(child.placement.ager)``.
    """

    def __init__(self, own: Memcg, size: int, backing: BackingKind = BackingKind.FILE, tag: str = "vm"):
        self.size = size
        with ExitStack() as undo:  # on a failed start: end the child, then remove its cgroup
            self.cg = ExperimentCgroup.create(tag, parent=own)
            undo.callback(self.cg.remove)
            self.proc = VmProcess()
            undo.callback(self.proc.close)
            self.pid = self.proc.pid
            self.cg.add_pid(self.pid)
            self.placement = resolve_placement(AUTO, AUTO, vcpus=1)
            built = self.proc.build(MachineSpec(mem_bytes=size, vcpus=1, backing=backing), None,
                                    nice=-10, cpus=self.placement.vm)
            undo.pop_all()
        self.memslots: list[Memslot] = list(built.memslots)
        self.backing = self.proc.backing_fd_path(0)  # the first data memslot's, None if anonymous

    def epoch(self, pattern: str, write: bool) -> int:
        """Run one epoch; the pages touched."""
        return self.proc.epoch(pattern, write).touches

    def spin(self, pattern: str, write: bool, min_runs: int = 0) -> None:
        """Run the next epoch over and over until :meth:`stop`, after ``min_runs`` runs of it."""
        self.proc.loop_start(pattern, write, min_runs=min_runs)

    def stop(self) -> int:
        """Stop spinning; how often the epoch ran."""
        return self.proc.loop_stop().runs

    def sync(self) -> None:
        """Write the guest memory back to its files: clean pages reclaim can drop without writeback."""
        self.proc.sync_memory()

    def stats(self) -> dict:
        """The VM's binary stats."""
        return self.proc.stats()

    def slot_refs(self) -> list[Memslot]:
        """The data memslots as an ager's context wants them."""
        return list(self.memslots)

    def target(self, ager_tids: set[int] | None = None) -> TraceTarget:
        return TraceTarget(self.pid, list(self.memslots), set(ager_tids or ()))

    def close(self) -> None:
        self.proc.close()
        self.cg.remove()
