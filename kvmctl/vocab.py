"""Words every layer shares: who aged guest memory, who waited on a lock, the trace window, a histogram bucket,
the signal that asks a kvmctl process for its Python stacks.

One definition each. Reports carry the string values. The BPF programs index
their maps by ``code``: ebpf/aging.c ``enum task_class`` and ebpf/locks.c
``enum waiter_class`` list the same members in the same order
(tests/unit/test_trace_enums.py checks).
"""

from __future__ import annotations

import enum
import faulthandler
import io
import signal
from dataclasses import dataclass

# Every kvmctl process dumps its threads' Python stacks to stderr on this signal: the lab's
# no-progress watchdog sends it (SIGUSR1 already kicks vCPU threads out of KVM_RUN).
STACK_SIGNAL = signal.SIGUSR2


def dump_stacks_on_signal() -> None:
    """Register the stack dump, where stderr is a real file (not when a caller captured it in memory)."""
    try:
        faulthandler.register(STACK_SIGNAL, all_threads=True)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass  # the dump is a debugging aid: a stderr without a file descriptor goes without it


class _Coded(str, enum.Enum):
    """A string-valued enum whose members also have the code of their C mirror: their position."""

    @property
    def code(self) -> int:
        return type(self)._member_names_.index(self.name)

    @classmethod
    def from_code(cls, code: int):
        return cls[cls._member_names_[code]]


class TaskClass(_Coded):
    """Who made an aging call: ours is separated from the host's background."""

    OURS = "ours"  # the experiment's own ager threads
    KSWAPD = "kswapd"
    KDAMOND = "kdamond"
    VM = "vm"  # the experiment VM's own threads (reclaim while faulting guest memory in)
    OTHER = "other"


class WaiterClass(_Coded):
    """Who waited on a contended lock."""

    VM = "vcpu"  # a thread of the experiment VM: its vCPUs ("vcpu" in reports, WAITER_VM in C)
    AGER = "ager"  # an aging task (ours or background)
    OTHER = "other"


@dataclass(frozen=True)
class Bucket:
    """Values in [low, high] were seen ``count`` times (a log2 histogram's slot)."""

    low: int
    high: int  # inclusive
    count: int


@dataclass
class TraceWindow:
    """CLOCK_MONOTONIC span in which the BPF programs counted (bpf_ktime_get_ns is the same clock)."""

    start_ns: int | None = None  # probes attached
    end_ns: int | None = None  # probes detached

    @property
    def duration_ns(self) -> int | None:
        if self.start_ns is None or self.end_ns is None:
            return None
        return self.end_ns - self.start_ns
