"""What an experiment does, from flags or a TOML file.

A TOML file holds the same keys as the long flags (``mem = "512M"``,
``pattern = "hotcold:0.25"``, ``[ager] name = "memcg"`` with the ager's
options beside it); flags given on the command line override the file.
Defaults work on a PVM development host: file-backed memory (anonymous
memory is never reclaimed without swap), the memcg ager squeezing to a fixed
target every pass, and a hot set of a quarter of the guest that moves to the
next quarter every pass, so every pass has pages to evict and a move to notice.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kvmctl.agers import ager_class
from kvmctl.errors import UsageError
from kvmctl.guest.machine import MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.placement import CpuPlacement, resolve_placement
from kvmctl.units import PAGE_SIZE, parse_duration

MODES = ("concurrent", "between")


@dataclass
class ExperimentSpec:
    mem: str = "512M"
    vcpus: int = 1
    backing: str = "file"
    backing_path: str | None = None
    memslots: int = 1
    guest_page: str = "4K"
    share: bool = False
    pattern: str = "moving:0.25:1"
    access: str = "read"
    seed: int = 0
    populate: bool = True  # a seq write epoch first, then fsync: every page resident and clean
    ager: str = "memcg"
    # memcg: each pass squeezes the cgroup to (usage after populate - half the guest's size): room for
    # two windows of the moving hot set, so the host must evict the window that went cold a pass ago
    ager_options: dict[str, Any] = field(default_factory=lambda: {"squeeze_guest": 0.5})
    passes: int = 5  # four moves of the hot set, the first two followed long enough to see them evicted
    mode: str = "concurrent"  # ager passes run while the guest touches memory, or between epochs
    epochs_per_pass: int = 1  # mode "between": epochs before each pass
    # Mode "concurrent": before each pass the guest runs its epoch once whole (every page of the hot
    # set touched: after the populate's writeback, or a move of the hot set, that first run faults
    # them all back and takes seconds for a large guest), then ``settle_runs`` more times, then for
    # ``settle``. Counted in runs, the settle scales with the guest; the time is a floor.
    settle_runs: int = 2
    settle: str = "1s"
    interval: str = "100ms"  # aging time-series bucket
    epoch_timeout: str = "600s"
    # Nice value of the VM process. Reclaim keeps a page only if the guest
    # touches it between reclaim's two looks; on a loaded host a vCPU that
    # waits for a CPU through that window loses its hot set. Negative values
    # need root and only reorder CPU time; they change nothing in the kernel.
    vm_nice: int = -10
    # CPU lists (cpulist format), "auto" or "all". Reclaim runs in the ager's context: a vCPU
    # sharing its CPU stalls through the pass and loses its hot set (see kvmctl.placement).
    vm_cpus: str = "auto"
    ager_cpus: str = "auto"
    trace: bool = True
    # Nested-VM fallback (SVM hosts, e.g. in kvmctl lab): the nested_svm payload runs at CPL0 and
    # VMRUNs an L2 that touches the memory. Pass 0 ages before any L2 ran (TDP roots only), later
    # passes after it (shadow roots exist), so the report shows the paths before and after.
    nested: bool = False
    repeat: int = 1

    # --- derived and validated -------------------------------------------
    def validate(self) -> None:
        self.machine_spec().validate()
        Pattern.parse(self.pattern)
        ager_class(self.ager).check_options(self.ager_options)
        if self.access not in ("read", "write"):
            raise UsageError(f"access {self.access!r} is not read or write", "use --access read or --access write")
        if self.nested and (self.mode != "between" or Pattern.parse(self.pattern).kind.name != "SEQ"):
            raise UsageError("--nested runs the nested_svm payload, which touches memory in seq order between passes",
                             "use --nested with --mode between --pattern seq")
        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r} is unknown", f"use one of {', '.join(MODES)}")
        if int(self.settle_runs) < 0:
            raise UsageError(f"settle-runs must be 0 or more, got {self.settle_runs}", "use --settle-runs 2")
        for name in ("passes", "epochs_per_pass", "repeat"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}",
                                 f"use --{name.replace('_', '-')} 1 or more")
        if not -20 <= int(self.vm_nice) <= 19:
            raise UsageError(f"vm-nice {self.vm_nice} is outside -20..19", "use a nice value like -10 or 0")
        for name in ("settle", "interval", "epoch_timeout"):
            parse_duration(getattr(self, name), name.replace("_", "-"))
        self.placement()

    def placement(self) -> CpuPlacement:
        return resolve_placement(self.vm_cpus, self.ager_cpus, int(self.vcpus))

    def machine_spec(self) -> MachineSpec:
        return MachineSpec.from_shape(self.mem, self.vcpus, self.backing, self.backing_path, self.memslots,
                                      self.guest_page, self.share, payload="nested_svm" if self.nested else "touch",
                                      cpl=0 if self.nested else 3)

    def ager_options_for(self, usage_bytes: int, guest_bytes: int) -> dict[str, Any]:
        """The ager's options once the VM runs: ``squeeze_guest`` becomes a target below the cgroup's usage."""
        opts = dict(self.ager_options)
        if "squeeze_guest" in opts:  # take this fraction of the guest's size away from the cgroup's usage
            frac = float(opts.pop("squeeze_guest"))
            opts["target_bytes"] = max(PAGE_SIZE, usage_bytes - int(frac * guest_bytes))
        return opts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- sources ---------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path) -> "ExperimentSpec":
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise UsageError(f"spec file {p} does not exist", "check the path given to --spec") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"spec file {p} is not valid TOML: {err}", "fix the line it names") from None
        return cls.from_mapping(data, str(p))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "spec") -> "ExperimentSpec":
        spec = cls()
        known = {f.name for f in fields(cls)}
        data = dict(data)  # the caller's mapping stays as it was
        ager = data.pop("ager", None)
        if isinstance(ager, dict):
            ager = dict(ager)
            spec.ager = str(ager.pop("name", spec.ager))
            spec.ager_options = ager
        elif ager is not None:
            spec.ager = str(ager)
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UsageError(f"{where}: unknown key {key!r}", f"known keys: {', '.join(sorted(known))}")
            expected = str if name == "backing_path" else type(getattr(spec, name))  # default None
            if not _type_ok(expected, value):
                raise UsageError(f"{where}: {key} = {value!r} has the wrong type", f"give a {expected.__name__}")
            setattr(spec, name, str(value) if expected is str else value)
        return spec


def _type_ok(expected: type, value: Any) -> bool:
    if expected is int:  # TOML true/false are bools, and bool is a subclass of int
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is str:  # sizes and durations may be bare numbers
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    return isinstance(value, expected)


def parse_ager_options(items: list[str]) -> dict[str, Any]:
    """--ager-opt key=value (numbers become numbers)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--ager-opt {item!r} is not key=value", "write it like --ager-opt squeeze=0.5")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out
