"""The experiment report: one versioned dataclass tree, JSON in and out.

The experiment fills a :class:`Report`; every renderer (text, HTML, diff,
Chrome trace) reads only this tree. Figures a host cannot observe stay
``None`` and carry a reason in ``probes.not_observable`` keyed by the figure's
dotted name (``"aging.bits_cleared"``), so no renderer ever shows a made-up 0.
``docs/report-schema.md`` documents every field.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kvmctl import __version__
from kvmctl.errors import UsageError
from kvmctl.report.output import write_atomic
from kvmctl.kvm.memslot import Memslot
from kvmctl.units import PAGE_SIZE
from kvmctl.vocab import Bucket, TaskClass, TraceWindow, WaiterClass

SCHEMA_VERSION = 1
KIND = "kvmctl-report"
HEATMAP_BINS = 64  # fixed so that heat maps of two reports line up bin by bin


class Mmu(str, enum.Enum):
    TDP = "tdp"  # EPT/NPT with the TDP MMU
    SHADOW = "shadow"  # shadow paging (PVM, or no TDP MMU)


class Verdict(str, enum.Enum):
    """Which aging path the experiment VM's aging calls took."""

    TDP = "tdp"
    RMAP_SHADOW = "rmap (no TDP MMU: shadow paging)"
    RMAP_NESTED = "rmap (nested)"


class Headers(str, enum.Enum):
    """Which kernel headers BCC compiled the probes against."""

    EXACT = "exact"
    MISMATCHED = "mismatched"
    NONE = "none"  # BCC not used (nothing traced)


def _key(name: str) -> dict:
    """Field metadata: the JSON key differs from the Python name (keywords)."""
    return {"key": name}


# ---------------------------------------------------------------------------
# The tree


@dataclass
class HostFacts:
    kernel_release: str | None = None
    machine: str | None = None
    kvm_module: str | None = None  # kvm_intel, kvm_amd, kvm_pvm
    mmu: Mmu | None = None
    tdp_mmu: bool | None = None
    lockless_aging: bool | None = None  # CONFIG_KVM_MMU_LOCKLESS_AGING
    headers: Headers | None = None
    headers_version: str | None = None  # e.g. "6.1.0-28-amd64" when mismatched
    cpus: int | None = None
    memory_bytes: int | None = None


@dataclass
class Probes:
    chosen: dict[str, str] = field(default_factory=dict)  # measurement -> attach point
    not_observable: dict[str, str] = field(default_factory=dict)  # figure/measurement -> reason


@dataclass
class TaskAging:
    pid: int
    comm: str
    task_class: TaskClass = field(metadata=_key("class"))
    calls: int
    pages: int


@dataclass
class AgingSample:
    t_offset_ns: int  # interval start, from trace_window.start_ns
    calls: int
    pages: int
    background_calls: int
    background_pages: int


@dataclass
class Aging:
    calls: int | None = None  # all aging calls on our VM's memslots (ours + background)
    pages: int | None = None  # guest pages those calls covered
    background_calls: int | None = None  # calls not made by our ager
    background_pages: int | None = None
    bits_cleared: int | None = None  # accessed bits actually cleared (TDP MMU only)
    interval_ns: int | None = None  # width of one series sample
    by_task: list[TaskAging] = field(default_factory=list)
    series: list[AgingSample] = field(default_factory=list)


@dataclass
class ContentionRow:
    """One ``perf lock contention`` row: a (caller, lock, waiter) key."""

    contended: int
    total_wait_ns: int
    max_wait_ns: int
    avg_wait_ns: int
    lock_type: str  # spinlock, rwlock:W, rwsem:R, mutex, ...
    caller: str  # first non-lock frame, symbol+offset
    waiter_class: WaiterClass
    is_mmu_lock: bool
    lock: str | None = None  # lock address or symbol when known


@dataclass
class Contention:
    mmu_lock_wait_ns: int | None = None  # total wait on our VM's mmu_lock
    mmu_lock_contended: int | None = None
    rows: list[ContentionRow] = field(default_factory=list)


@dataclass
class GroundTruth:
    hot_pages: int | None = None
    cold_pages: int | None = None
    hot_resident_fraction: float | None = None  # after the last pass
    cold_resident_fraction: float | None = None
    evicted_pages: int | None = None
    evicted_cold_fraction: float | None = None
    refaults: int | None = None  # evicted pages the guest touched again
    precision: float | None = None  # young/idle verdicts vs the touched set
    recall: float | None = None
    scored_by: str | None = None  # the ager whose decisions were scored


@dataclass
class Spte:
    """Mappings of the VM's data pages (kvmmmu tracepoints) beside the pages_4k gauge."""

    set_spte: int | None = None  # kvm_mmu_set_spte events on data gfns in the trace window
    refaults: int | None = None  # of those, re-mappings of a gfn mapped before (after a zap)
    gfns_mapped: int | None = None  # distinct data gfns mapped at least once
    shadow_pages_created: int | None = None  # kvm_mmu_get_page events that created a shadow page
    pages_4k_at_build: int | None = None  # VM stat pages_4k after the VM was built (system pages)
    pages_4k_after_populate: int | None = None  # ... after the populate epoch (system + every data page)
    pages_4k_at_end: int | None = None  # ... at the end of the run


@dataclass
class Fallback:
    verdict: Verdict | None = None
    tdp_share: float | None = None  # share of aging calls on the TDP path
    rmap_share: float | None = None
    evidence: list[str] = field(default_factory=list)


@dataclass
class EpochRow:
    epoch: int
    vcpu: int
    pattern: str
    pages_touched: int
    guest_seconds: float
    wall_seconds: float
    start_ns: int | None = None  # CLOCK_MONOTONIC, for the timeline export
    end_ns: int | None = None


@dataclass
class PassRow:
    pass_no: int = field(metadata=_key("pass"))
    ager: str
    start_ns: int  # CLOCK_MONOTONIC
    end_ns: int
    hot_resident_fraction: float | None = None
    cold_resident_fraction: float | None = None
    evicted_pages: int | None = None
    refaults: int | None = None  # since the previous pass
    aging_calls: int | None = None  # during the pass
    aging_pages: int | None = None
    background_calls: int | None = None
    aging_paths: dict[str, int] | None = None  # kvm_age_gfn calls per path during the pass (function probes)


@dataclass
class HeatMap:
    """Aged vs touched counts along one memslot, in HEATMAP_BINS bins.

    Bin i covers the slot's pages [i*pages//bins, (i+1)*pages//bins).
    """

    slot: int
    pages: int
    bins: int
    aged: list[int]  # aging visits per bin (sum over the bin's pages)
    touched: list[int]  # epochs that touched a page, summed per bin

    @classmethod
    def from_gfn_counts(
        cls,
        memslot: Memslot,
        aged: Mapping[int, int],
        touched: Mapping[int, int],
        bins: int = HEATMAP_BINS,
    ) -> HeatMap:
        """Bin per-gfn counts (absolute gfns; others ignored) over ``memslot``."""
        pages = memslot.pages
        base = memslot.gpa_start // PAGE_SIZE
        bins = min(bins, pages)
        edges = (np.arange(bins, dtype=np.int64) * pages) // bins

        def binned(counts: Mapping[int, int]) -> list[int]:
            per_page = np.zeros(pages, dtype=np.int64)
            for gfn, n in counts.items():
                if 0 <= gfn - base < pages:
                    per_page[gfn - base] += n
            return [int(x) for x in np.add.reduceat(per_page, edges)]

        return cls(memslot.slot, pages, bins, binned(aged), binned(touched))


@dataclass
class GuestFault:
    message: str
    registers: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    complete: bool = False  # set True only when the run finished normally
    incomplete_reason: str | None = None
    kvmctl_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command_line: list[str] = field(default_factory=list)
    host: HostFacts = field(default_factory=HostFacts)
    spec: dict[str, Any] = field(default_factory=dict)
    probes: Probes = field(default_factory=Probes)
    trace_window: TraceWindow = field(default_factory=TraceWindow)
    memslots: list[Memslot] = field(default_factory=list)
    aging: Aging = field(default_factory=Aging)
    histograms: dict[str, list[Bucket]] = field(default_factory=dict)
    contention: Contention = field(default_factory=Contention)
    ground_truth: GroundTruth = field(default_factory=GroundTruth)
    fallback: Fallback = field(default_factory=Fallback)
    spte: Spte = field(default_factory=Spte)
    lost_events: int | None = None
    epochs: list[EpochRow] = field(default_factory=list)
    passes: list[PassRow] = field(default_factory=list)
    heatmaps: list[HeatMap] = field(default_factory=list)
    vm_stats: dict[str, int | list[int]] = field(default_factory=dict)
    repeats: list[dict[str, float | None]] = field(default_factory=list)
    guest_fault: GuestFault | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Build from a current-schema dict; UsageError names a bad field."""
        return _load(cls, data, "")

    def mark_not_observable(self, figure: str, reason: str) -> None:
        """Set a figure (dotted name) to null and record why."""
        set_figure(self, figure, None)
        self.probes.not_observable[figure] = reason

    def reason_for(self, figure: str) -> str:
        """Why a null figure is null, in words fit for the user."""
        reason = self.probes.not_observable.get(figure)
        if reason is None and "." in figure:  # a whole measurement may be marked
            reason = self.probes.not_observable.get(figure.split(".", 1)[0])
        if reason is not None:
            return reason
        if not self.complete:
            return "the run was cut short first"
        return "no reason recorded"

    def unexplained_nulls(self) -> list[str]:
        """Required figures that are null without a recorded reason."""
        return [
            k
            for k in REQUIRED_FIGURES
            if get_figure(self, k) is None and self.reason_for(k) == "no reason recorded"
        ]


# Figures other tools rely on (issue 4): present in every report, null + reason when unknown.
REQUIRED_FIGURES: tuple[str, ...] = (
    "host.mmu",
    "aging.calls",
    "aging.pages",
    "aging.background_calls",
    "aging.bits_cleared",
    "ground_truth.hot_resident_fraction",
    "ground_truth.evicted_cold_fraction",
    "ground_truth.refaults",
    "contention.mmu_lock_wait_ns",
    "fallback.verdict",
    "fallback.rmap_share",
    "lost_events",
    "trace_window.start_ns",
    "trace_window.end_ns",
)


class Unit(enum.Enum):
    COUNT = "count"
    FRACTION = "fraction"
    NS = "ns"


@dataclass(frozen=True)
class Figure:
    key: str  # dotted path into the report
    label: str
    unit: Unit
    lower_is_better: bool | None = None  # None: neither direction is "better"


# The headline: what `report show` leads with, `report diff` compares and repeats record.
HEADLINE: tuple[Figure, ...] = (
    Figure("aging.calls", "aging calls", Unit.COUNT),
    Figure("aging.pages", "pages aged", Unit.COUNT),
    Figure("aging.background_calls", "background aging calls", Unit.COUNT),
    Figure("aging.bits_cleared", "accessed bits cleared", Unit.COUNT),
    Figure("ground_truth.hot_resident_fraction", "hot pages resident", Unit.FRACTION, False),
    Figure("ground_truth.evicted_cold_fraction", "evicted pages that were cold", Unit.FRACTION, False),
    Figure("ground_truth.refaults", "re-faults of evicted pages", Unit.COUNT, True),
    Figure("ground_truth.precision", "young/idle precision", Unit.FRACTION, False),
    Figure("ground_truth.recall", "young/idle recall", Unit.FRACTION, False),
    Figure("contention.mmu_lock_wait_ns", "mmu_lock wait", Unit.NS, True),
    Figure("fallback.rmap_share", "aging calls on the rmap path", Unit.FRACTION),
    Figure("lost_events", "lost events", Unit.COUNT, True),
)


def get_figure(report: Report, key: str) -> Any:
    obj: Any = report
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj.value if isinstance(obj, enum.Enum) else obj


def set_figure(report: Report, key: str, value: Any) -> None:
    *path, last = key.split(".")
    obj: Any = report
    for part in path:
        obj = getattr(obj, part)
    if not hasattr(obj, last):
        raise AttributeError(f"report has no figure {key!r}")
    setattr(obj, last, value)


def headline_figures(report: Report) -> dict[str, float | None]:
    """The headline as plain numbers: one entry of ``Report.repeats``."""
    out: dict[str, float | None] = {}
    for fig in HEADLINE:
        value = get_figure(report, fig.key)
        out[fig.key] = None if value is None else float(value)
    return out


# ---------------------------------------------------------------------------
# (De)serialisation: generic over the dataclass tree


def _json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _dump(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_json_key(f): _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _dump(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _bad(where: str, expected: str, value: Any) -> UsageError:
    shown = json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
    return UsageError(
        f"report field {where or '<top>'} should be {expected}, got {shown}",
        "the file is not a valid kvmctl report; re-run the experiment or restore the file",
    )


def _load(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise _bad(where, "a value", value)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _load(option, value, where)
            except UsageError as err:
                errors.append(err)
        raise errors[0]
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        (item,) = typing.get_args(tp)
        return [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        _, item = typing.get_args(tp)
        return {str(k): _load(item, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _bad(where, "one of " + ", ".join(repr(m.value) for m in tp), value) from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            key = _json_key(f)
            sub = f"{where}.{key}" if where else key
            if key in value:
                kwargs[f.name] = _load(hints[f.name], value[key], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UsageError(
                    f"report field {sub} is missing",
                    "the file is not a valid kvmctl report; re-run the experiment or restore the file",
                )
        return tp(**kwargs)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(where, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        return value
    raise TypeError(f"report model has an unsupported field type {tp!r} at {where}")


# ---------------------------------------------------------------------------
# Files

_NOT_A_REPORT_HINT = "give the JSON file that 'kvmctl experiment --output' wrote"
_DAMAGED_HINT = "the file is damaged; re-run the experiment or restore the file from a copy"

# Migrations from older schema versions: version -> function turning a dict of
# that version into a dict of the next one. Schema 1 is the first.
MIGRATIONS: dict[int, typing.Callable[[dict[str, Any]], dict[str, Any]]] = {}


_NUMBER_PREFIX = re.compile(r"-?\d*\.?\d*(?:[eE][+-]?\d*)?")


def _ends_early(text: str, err: json.JSONDecodeError) -> bool:
    """Whether the decode failed only because the text stops (a cut-off write)."""
    if err.msg.startswith("Unterminated string"):  # such a string runs to the end
        return True
    rest = text[err.pos :].rstrip()
    return (
        not rest
        or any(literal.startswith(rest) for literal in ("true", "false", "null"))
        or _NUMBER_PREFIX.fullmatch(rest) is not None
    )


def parse_report_text(text: str, name: str) -> dict[str, Any]:
    """Decode, recognise and migrate a report document to the current schema."""
    if not text.strip():
        raise UsageError(f"report {name} is empty", _DAMAGED_HINT)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip()[:1] in "{[" and _ends_early(text, err):
            raise UsageError(f"report {name} is truncated (JSON ends early)", _DAMAGED_HINT) from None
        raise UsageError(
            f"report {name} is not JSON (line {err.lineno}, column {err.colno}: {err.msg})", _NOT_A_REPORT_HINT
        ) from None
    if not isinstance(data, dict) or data.get("kind") != KIND or "schema_version" not in data:
        raise UsageError(f"{name} is not a kvmctl report", _NOT_A_REPORT_HINT)
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(f"report {name} has a malformed schema_version {version!r}", _DAMAGED_HINT)
    if version > SCHEMA_VERSION:
        raise UsageError(
            f"report {name} was written by a newer kvmctl (schema {version}; this kvmctl reads up to {SCHEMA_VERSION})",
            "upgrade kvmctl",
        )
    while version < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise UsageError(
                f"report {name} has schema {version}, which no kvmctl release wrote or this one can read",
                f"re-run the experiment with this kvmctl (schema {SCHEMA_VERSION})",
            )
        data = migrate(data)
        version = data["schema_version"]
    return data


def read_report_dict(path: str | Path) -> dict[str, Any]:
    """The report's JSON, migrated to the current schema and checked."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"report {path} does not exist", "check the path, or run 'kvmctl experiment --output'") from None
    except IsADirectoryError:
        raise UsageError(f"report {path} is a directory", _NOT_A_REPORT_HINT) from None
    except PermissionError:
        raise UsageError(f"report {path} is not readable", "check its permissions or run with sudo") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"report {path} is not JSON (not UTF-8 text)", _NOT_A_REPORT_HINT) from None
    data = parse_report_text(text, str(path))
    Report.from_dict(data)  # validate every field now, not halfway through rendering
    return data


def load_report(path: str | Path) -> Report:
    """Read a report file; every failure is a UsageError with a hint."""
    return Report.from_dict(read_report_dict(path))


def report_json(report: Report) -> str:
    """The report as JSON, checked against the schema so every file written loads again.

    A failed check is a bug in the code that filled the report (a string in a
    bool field, a NaN): ValueError names the field.
    """
    data = report.to_dict()
    try:
        text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    except ValueError as err:
        raise ValueError(f"report holds a non-finite number: {err}") from None
    try:
        _load(Report, data, "")
    except UsageError as err:
        raise ValueError(f"report does not match schema {SCHEMA_VERSION}: {err.message}") from None
    return text


def write_report(report: Report, path: str | Path) -> Path:
    """Write atomically, mode 0644, never through a symlink, owned by SUDO_UID."""
    return write_atomic(path, report_json(report).encode())
