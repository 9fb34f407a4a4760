"""The common shape of a host-side ager.

An ager makes the host age (or observe the age of) the experiment VM's memory
between or during payload epochs. The experiment drives every ager the same way::

    ager = get_ager("memcg")
    avail = ager.availability()          # ok / one-line reason / remedy
    ager.prepare(ctx)                    # raises UnsupportedError when not ok
    try:
        for i in range(passes):
            ... run an epoch ...
            record = ager.run_pass(i)     # PassRecord
    finally:
        ager.restore()                   # idempotent; also runs from kvmctl.cleanup

Per-page results index the VM's data memory as the concatenation of
``ctx.memslots`` in the order given, 4 KiB pages; :func:`page_gfns` maps an
index to its guest frame number.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from kvmctl import cleanup
from kvmctl.cgroup import ExperimentCgroup
from kvmctl.errors import PermissionDeniedError, UnsupportedError, UsageError
from kvmctl.kvm.memslot import Memslot
from kvmctl.probe.item import ROOT_REMEDY, Item, is_root
from kvmctl.units import PAGE_SIZE


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str
    remedy: str = ""
    permission: bool = False  # missing only for lack of privilege: exit 5, not 3

    @classmethod
    def of(cls, item: Item, subject: str, ok_reason: str) -> Availability:
        """The probe's answer about what the ager needs, in the ager's words."""
        if item:
            return cls(True, ok_reason)
        permission = not is_root() and ROOT_REMEDY in (item.remedy or "")
        return cls(False, f"{subject}: {item.reason}", item.remedy or "", permission)

    def require(self, name: str) -> None:
        """Raise UnsupportedError (PermissionDeniedError for a privilege problem) unless ok."""
        if not self.ok:
            cls = PermissionDeniedError if self.permission else UnsupportedError
            raise cls(f"ager {name} is not available: {self.reason}", self.remedy or None)


# Checks of --ager-opt values: each returns the value to use or raises ValueError("must ...").


def fraction(value: Any) -> float:
    x = float(value)
    if not 0.0 < x < 1.0:
        raise ValueError("must be a fraction between 0 and 1 (both exclusive)")
    return x


def count(value: Any) -> int:
    if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(value)


def amount(value: Any) -> int:
    if isinstance(value, bool) or int(value) != float(value) or int(value) < 0:
        raise ValueError("must be a whole number of at least 0")
    return int(value)


def seconds(value: Any) -> float:
    x = float(value)
    if not x >= 0:
        raise ValueError("must be a number of seconds of at least 0")
    return x


def yes_no(value: Any) -> bool:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    try:
        return words[str(value).strip().lower()]
    except KeyError:
        raise ValueError("must be true or false (1/0, yes/no)") from None


@dataclass(frozen=True)
class Option:
    """An ``--ager-opt KEY=VALUE`` an ager understands; ``check`` raises ValueError saying what a value must be."""

    key: str
    help: str
    check: Callable[[Any], Any]


@dataclass
class AgerContext:
    cgroup: ExperimentCgroup | None
    vm_pid: int
    memslots: list[Memslot]
    guest_pages: int = 0  # 0: derived from the memslots
    options: dict[str, Any] = field(default_factory=dict)
    caps: Any = None  # the experiment's HostCaps; None: the agers probe the host themselves

    def __post_init__(self) -> None:
        total = sum(m.pages for m in self.memslots)
        if not self.guest_pages:
            self.guest_pages = total
        elif self.guest_pages != total:
            raise UsageError(f"guest page count {self.guest_pages} does not match the memslots ({total} pages)",
                             "pass the data memslots' total size in 4 KiB pages")


def page_gfns(memslots: list[Memslot]) -> np.ndarray:
    """Guest frame number of every per-page index, memslots concatenated in order."""
    parts = [np.arange(m.gfn_start, m.gfn_start + m.pages, dtype=np.uint64) for m in memslots]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def page_hvas(memslots: list[Memslot]) -> np.ndarray:
    """Host virtual address of every per-page index, memslots concatenated in order."""
    parts = [np.arange(m.hva_start, m.hva_end, PAGE_SIZE, dtype=np.uint64) for m in memslots]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


@dataclass
class PassRecord:
    """What one ager pass did and saw; each ager extends it with its own fields. Times are time.monotonic_ns()."""

    ager: str
    index: int
    start_ns: int = 0
    end_ns: int = 0
    thread_ids: list[int] = field(default_factory=list)  # native tids that did the aging (for the tracer)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    did_nothing: str | None = None  # why the ager had nothing to do this pass, in words
    # Per guest page (see module doc): True = idle (not accessed since marked).
    # None when this ager cannot observe single pages. ``observed`` is False
    # where the page could not be tracked (not present in the host page tables).
    idle: np.ndarray | None = None
    observed: np.ndarray | None = None

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; bitmaps become counts (the experiment scores the arrays themselves)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("idle", "observed")}
        out["duration_ns"] = self.duration_ns
        out["bitmap_pages"] = None if self.idle is None else int(self.idle.size)
        out["observed_pages"] = None if self.observed is None else int(self.observed.sum())
        return out


class Ager(abc.ABC):
    """Base class: availability probe, prepare/run_pass/restore, cleanup registration."""

    name: ClassVar[str]
    # One line for `kvmctl info` and --help.
    summary: ClassVar[str] = ""
    # What a pass of this ager records.
    record_type: ClassVar[type[PassRecord]] = PassRecord
    # The --ager-opt keys it understands; any other key is an error.
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options as the ager uses them; a key it does not know or a value that cannot work is refused."""
        known = {o.key: o for o in cls.options}
        out = {}
        for key, value in options.items():
            if key not in known:
                keys = ", ".join(known) or "none"
                raise UsageError(f"ager {cls.name} has no option {key!r}", f"its options: {keys}")
            try:
                out[key] = known[key].check(value)
            except UsageError:
                raise
            except (TypeError, ValueError) as err:
                why = str(err) if isinstance(err, ValueError) and "must" in str(err) else "has the wrong type"
                raise UsageError(f"--ager-opt {key}={value} {why}", f"{key}: {known[key].help}") from None
        return out

    def __init__(self) -> None:
        self.ctx: AgerContext | None = None
        self._restore_handle: cleanup.Handle | None = None
        # host settings this ager chose for its passes (name -> value), for the report
        self.settings: dict[str, str] = {}

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this host can run the ager, and if not, why and how to fix it."""

    def prepare(self, ctx: AgerContext) -> None:
        """Check availability, keep the context, register restore() with cleanup."""
        self.availability().require(self.name)
        ctx.options = self.check_options(ctx.options)
        self.ctx = ctx
        self._restore_handle = cleanup.register(f"restore ager {self.name}", self._restore)
        try:
            self._prepare(ctx)
        except BaseException:
            self.restore()
            raise

    def _prepare(self, ctx: AgerContext) -> None:
        """Ager-specific setup; host changes made here are undone by _restore()."""

    @abc.abstractmethod
    def _run_pass(self, record: PassRecord) -> None:
        """Do one pass, filling ``record``."""

    def run_pass(self, index: int) -> PassRecord:
        if self.ctx is None:
            raise UsageError(f"ager {self.name} was not prepared", "call prepare(ctx) before run_pass()")
        record = self.record_type(ager=self.name, index=index, thread_ids=[threading.get_native_id()])
        record.start_ns = time.monotonic_ns()
        try:
            self._run_pass(record)
        finally:
            record.end_ns = time.monotonic_ns()
        return record

    def restore(self) -> None:
        """Undo every host change of this ager; safe to call more than once."""
        if self._restore_handle is not None:
            handle, self._restore_handle = self._restore_handle, None
            handle.release()

    def _restore(self) -> None:
        """Ager-specific undo; the default has nothing to undo."""

    def _option(self, key: str, default: Any) -> Any:
        assert self.ctx is not None
        return self.ctx.options.get(key, default)
