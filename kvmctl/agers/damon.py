"""DAMON: a kdamond of our own, monitoring the VM process with vaddr operations.

DAMON's vaddr sampling clears and tests accessed bits in the VM process's page
tables, which reaches KVM through the MMU notifier (kvm_age_hva and
kvm_test_age_hva). kvmctl only ever drives a kdamond it created itself:

* if ANY kdamond exists when we look (``nr_kdamonds`` > 0, or a kdamond
  directory whose state is not "off"), it belongs to someone else (an operator,
  another kvmctl) and we refuse with that reason, writing nothing at all;
* otherwise we create exactly one (``nr_kdamonds`` 0 -> 1), configure it for
  the VM's pid and memslot ranges with a "stat" scheme, turn it on, and on
  restore turn it off and set ``nr_kdamonds`` back to 0 -- after checking the
  kdamond is still the one we started.

Every write goes through :meth:`DamonAger._write`, which refuses any path
outside the kdamond we own. A pass lets the kdamond run for ``pass_s``
seconds (default 1.0) and then reads the scheme's tried regions: a guest page
is young when a region with nr_accesses > 0 covers its hva.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvmctl.agers.base import Ager, AgerContext, Availability, Option, PassRecord, count, page_hvas, seconds
from kvmctl.errors import KvmctlError, UnsupportedError
from kvmctl.knobs import read_knob, write_knob
from kvmctl.probe.item import is_root
from kvmctl.probe.kernel import kernel_config
from kvmctl.probe.memory import DAMON_ADMIN, foreign_kdamonds, probe_damon_sysfs

_ULONG_MAX = (1 << 64) - 1
_UINT_MAX = (1 << 32) - 1


def _read(path: Path) -> str:
    return (read_knob(path, missing_ok=True) or "").strip()


@dataclass(frozen=True)
class DamonRegion:
    start: int
    end: int
    nr_accesses: int
    age: int


def read_tried_regions(scheme_dir: Path) -> list[DamonRegion]:
    tried = scheme_dir / "tried_regions"
    regions = []
    for d in sorted((d for d in tried.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)):
        regions.append(DamonRegion(int(_read(d / "start")), int(_read(d / "end")),
                                   int(_read(d / "nr_accesses")), int(_read(d / "age"))))
    return regions


def young_pages(hvas: np.ndarray, regions: list[DamonRegion]) -> tuple[np.ndarray, np.ndarray]:
    """Per page (by hva): (young, observed) from DAMON regions."""
    young = np.zeros(hvas.size, dtype=bool)
    observed = np.zeros(hvas.size, dtype=bool)
    for r in regions:
        inside = (hvas >= np.uint64(r.start)) & (hvas < np.uint64(r.end))
        observed |= inside
        if r.nr_accesses > 0:
            young |= inside
    return young, observed


@dataclass
class DamonPass(PassRecord):
    pages_found_idle: int = 0


class DamonAger(Ager):
    name = "damon"
    summary = "a kdamond of our own (vaddr on the VM pid); refuses if any other kdamond exists"
    record_type = DamonPass
    options = (
        Option("pass_s", "seconds the kdamond runs in each pass; default 1.0", seconds),
        Option("sample_us", "DAMON's sampling interval in microseconds; default 5000", count),
        Option("aggr_us", "DAMON's aggregation interval in microseconds; default 100000", count),
    )

    def __init__(self, admin: Path = DAMON_ADMIN):
        super().__init__()
        self.admin = admin
        self._owned: Path | None = None  # our kdamond's directory once created
        self._kdamond_pid: int | None = None

    def availability(self) -> Availability:
        sysfs = probe_damon_sysfs(kernel_config(), self.admin)
        if sysfs.value is None:  # no DAMON sysfs at all
            return Availability.of(sysfs, "DAMON sysfs is not in this kernel", "")
        if not is_root():
            return Availability(False, "DAMON sysfs is root-only", "run kvmctl as root", permission=True)
        foreign = foreign_kdamonds(self.admin)
        if foreign:
            return Availability(False, "a kdamond kvmctl did not create is running: " + ", ".join(foreign),
                                "DAMON is in use by someone else; kvmctl never touches it (use the passive ager to observe it)")
        return Availability(True, f"no kdamond exists; kvmctl will create its own under {self.admin}")

    def _write(self, path: Path, value: str) -> None:
        # The one door to DAMON sysfs: only our kdamond's files, or the
        # nr_kdamonds file while creating/removing it.
        owned = self._owned
        allowed = owned is not None and (path == self.admin / "kdamonds" / "nr_kdamonds" or owned in path.parents)
        if not allowed:
            raise KvmctlError(f"refusing to write {path}: not part of a kdamond kvmctl created",
                              "this is a kvmctl bug; please report it")
        write_knob(path, value, "see dmesg for DAMON's reason")

    def _prepare(self, ctx: AgerContext) -> None:
        kdamonds = self.admin / "kdamonds"
        # Re-check right before the first write: nothing may have appeared meanwhile.
        foreign = foreign_kdamonds(self.admin)
        if foreign:
            raise UnsupportedError("a kdamond kvmctl did not create is running: " + ", ".join(foreign),
                                   "kvmctl never touches another user's kdamond")
        self._owned = kdamonds / "0"
        self._write(kdamonds / "nr_kdamonds", "1")
        k = self._owned
        self._write(k / "contexts" / "nr_contexts", "1")
        c = k / "contexts" / "0"
        self._write(c / "operations", "vaddr")
        attrs = c / "monitoring_attrs"
        self._write(attrs / "intervals" / "sample_us", str(int(ctx.options.get("sample_us", 5000))))
        self._write(attrs / "intervals" / "aggr_us", str(int(ctx.options.get("aggr_us", 100000))))
        self._write(c / "targets" / "nr_targets", "1")
        t = c / "targets" / "0"
        self._write(t / "pid_target", str(ctx.vm_pid))
        self._write(t / "regions" / "nr_regions", str(len(ctx.memslots)))
        for i, m in enumerate(ctx.memslots):
            self._write(t / "regions" / str(i) / "start", str(m.hva_start))
            self._write(t / "regions" / str(i) / "end", str(m.hva_start + m.size))
        self._write(c / "schemes" / "nr_schemes", "1")
        s = c / "schemes" / "0"
        self._write(s / "action", "stat")
        for knob, hi in (("sz", _ULONG_MAX), ("nr_accesses", _UINT_MAX), ("age", _UINT_MAX)):
            self._write(s / "access_pattern" / knob / "min", "0")
            self._write(s / "access_pattern" / knob / "max", str(hi))
        self._write(k / "state", "on")
        self._kdamond_pid = int(_read(k / "pid"))

    def _run_pass(self, record: DamonPass) -> None:
        assert self.ctx is not None and self._owned is not None
        record.thread_ids = [self._kdamond_pid] if self._kdamond_pid else []
        time.sleep(float(self._option("pass_s", 1.0)))
        self._write(self._owned / "state", "update_schemes_tried_regions")
        regions = read_tried_regions(self._owned / "contexts" / "0" / "schemes" / "0")
        young, observed = young_pages(page_hvas(self.ctx.memslots), regions)
        record.idle, record.observed = observed & ~young, observed
        record.pages_found_idle = int(record.idle.sum())
        record.notes.append(f"{len(regions)} DAMON regions")

    def _restore(self) -> None:
        if self._owned is None:
            return
        k, self._owned = self._owned, None
        pid = _read(k / "pid") if (k / "pid").exists() else ""
        if self._kdamond_pid is not None and pid not in (str(self._kdamond_pid), "-1"):
            raise KvmctlError(f"kdamond {k.name} now has pid {pid}, not ours ({self._kdamond_pid}); left untouched",
                              "someone reconfigured DAMON meanwhile; check it by hand")
        self._owned = k  # re-arm the write guard for the teardown writes only
        try:
            if _read(k / "state") != "off":
                self._write(k / "state", "off")
            self._write(self.admin / "kdamonds" / "nr_kdamonds", "0")
        finally:
            self._owned = None
            self._kdamond_pid = None
