"""The messages between an experiment and its VM child: one dataclass per request and per reply.

They travel pickled over the child's stdin and stdout (both sides run the
same kvmctl), so a reply arrives as the typed object the child built. A new
request is a dataclass here plus a handler in :mod:`kvmctl.experiment.vmchild`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmctl.errors import KvmctlError
from kvmctl.guest.machine import MachineSpec
from kvmctl.guest.patterns import Region
from kvmctl.kvm import Memslot

# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """Build the VM and run it to its first sync; placed and prioritised before any vCPU thread exists."""

    spec: MachineSpec
    epoch_timeout: float | None = None
    nice: int = 0
    cpus: frozenset[int] | None = None


@dataclass(frozen=True)
class RunEpoch:
    pattern: str
    write: bool
    seed: int = 0


@dataclass(frozen=True)
class StartLoop:
    """Run one epoch over and over until StopLoop; the reply waits for ``min_runs`` of them.

    Repeating one epoch keeps the touched set fixed for the whole loop (an experiment's
    pass), however many times the guest gets through it; the next loop runs the next epoch.
    """

    pattern: str
    write: bool
    seed: int = 0
    min_runs: int = 0


@dataclass(frozen=True)
class StopLoop:
    pass


@dataclass(frozen=True)
class ReadStats:
    """The VM's binary stats."""


@dataclass(frozen=True)
class HostTouch:
    """Map every data page in the VM process, without a guest access."""


@dataclass(frozen=True)
class SyncMemory:
    """Write file-backed guest memory back, so reclaim finds clean pages."""


@dataclass(frozen=True)
class Finish:
    """Let the payload exit, close the VM, and end the child."""


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    pid: int
    vcpu_tids: list[int]
    tsc_hz: int
    total_pages: int
    memslots: list[Memslot]
    backing_fds: list[int]  # -1 for anonymous memory
    regions: list[Region]  # each vCPU's share of the data pages


@dataclass
class LoopSummary:
    """A loop: the epoch it repeated (its ground truth is recomputed from the number) and how often it ran."""

    pattern: str
    write: bool
    seed: int
    epoch: int
    runs: int = 0
    touches: int = 0
    guest_seconds: float = 0.0
    start_ns: int | None = None
    end_ns: int | None = None


@dataclass(frozen=True)
class Failed:
    """The request raised; the parent raises it again (a GuestError keeps its registers)."""

    kind: type[KvmctlError] | None  # None: not a KvmctlError (a bug), reported as one line
    message: str
    hint: str | None = None
    exit_code: int = 1
    registers: dict[str, int] = field(default_factory=dict)
