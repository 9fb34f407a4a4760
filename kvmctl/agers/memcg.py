"""memcg reclaim: squeeze the VM's experiment cgroup and let the kernel pick victims.

The kernel's reclaim walks the cgroup's LRU lists and, for every mapped page,
calls folio_referenced() -> the MMU notifier -> kvm_age_hva on the guest's
pages: the aging path this ager exists to exercise. Without swap only
file-backed (page cache) guest memory is reclaimable; anonymous guest memory
is skipped and a squeeze that needs it stops short (recorded, not an error).

The options are declared in ``MemcgAger.options``; an experiment turns its
``squeeze_guest`` into ``target_bytes`` once the guest is populated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmctl.agers.base import Ager, AgerContext, Availability, Option, PassRecord, amount, count, fraction, seconds
from kvmctl.cgroup import ExperimentCgroup
from kvmctl.errors import UsageError
from kvmctl.probe.memory import probe_memcg, swap_total_bytes
from kvmctl.units import PAGE_SIZE, format_bytes


def squeeze_target(usage: int, squeeze: float | None, target_bytes: int | None) -> int:
    """Usage to squeeze down to, page aligned."""
    if target_bytes is not None:
        if target_bytes < 0:
            raise UsageError(f"target_bytes must not be negative, got {target_bytes}", "give a size like 256M")
        return target_bytes // PAGE_SIZE * PAGE_SIZE
    frac = 0.5 if squeeze is None else float(squeeze)
    if not 0.0 < frac < 1.0:
        raise UsageError(f"squeeze must be between 0 and 1 (exclusive), got {squeeze}",
                         "give the fraction of usage to reclaim, e.g. --squeeze 0.5")
    return int(usage * (1.0 - frac)) // PAGE_SIZE * PAGE_SIZE


# memory.stat event counters worth a delta per pass (v1 and v2 names): refaults
# of evicted pages show hot pages that reclaim took and the guest wanted back.
_COUNTERS = ("workingset_refault_file", "workingset_refault_anon", "workingset_activate_file",
             "workingset_refault", "pgmajfault", "pgfault", "pgscan", "pgsteal", "pgactivate",
             "pgdeactivate", "pgrefill", "pgpgin", "pgpgout")


def stat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Deltas of the event counters among two memory.stat readings (local, not total_*)."""
    return {k: after[k] - before[k] for k in _COUNTERS if k in before and k in after}


@dataclass
class MemcgPass(PassRecord):
    bytes_requested: int = 0
    bytes_reclaimed: int = 0
    usage_before: int | None = None
    usage_after: int | None = None
    limit_steps: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # kernel event counts over the pass (memory.stat deltas)


# The options that each set a pass's target: one at a time.
TARGET_OPTIONS = ("squeeze_guest", "squeeze", "target_bytes")


class MemcgAger(Ager):
    name = "memcg"
    summary = "memory cgroup reclaim (v2 memory.reclaim, v1 stepped memory.limit_in_bytes)"
    record_type = MemcgPass
    options = (
        Option("squeeze_guest", "a fraction 0..1: every pass squeezes the cgroup to its usage after populating "
                                "minus this share of the guest's size, a fixed target; the experiment's default",
               fraction),
        Option("squeeze", "a fraction 0..1: every pass reclaims this share of the cgroup's usage at that moment",
               fraction),
        Option("target_bytes", "every pass squeezes the cgroup to this usage in bytes", amount),
        Option("steps", "reclaim in this many steps, v1 limit steps; default 8", count),
        Option("step_pause_s", "seconds between steps, so a running guest re-touches its hot pages; default 0",
               seconds),
    )

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        targets = [k for k in TARGET_OPTIONS if k in options]
        if len(targets) > 1:
            raise UsageError(f"ager options {' and '.join(targets)} both set the squeeze's target",
                             "give one of " + ", ".join(TARGET_OPTIONS))
        return super().check_options(options)

    def availability(self) -> Availability:
        memcg = probe_memcg()
        if not memcg:
            return Availability.of(memcg, "memory cgroup", "")
        version, rel = memcg.value["version"], memcg.value["rel"]
        how = "memory.reclaim" if version == "v2" else "stepped memory.limit_in_bytes"
        note = "" if swap_total_bytes() else "; no swap: only file-backed guest memory is reclaimable"
        return Availability(True, f"cgroup {version} below {rel} via {how}{note}")

    def _prepare(self, ctx: AgerContext) -> None:
        if ctx.cgroup is None:
            raise UsageError("the memcg ager needs the VM in an experiment cgroup", "create one with ExperimentCgroup.create()")
        squeeze_target(1 << 30, ctx.options.get("squeeze"), ctx.options.get("target_bytes"))  # validate early

    @property
    def cgroup(self) -> ExperimentCgroup:
        assert self.ctx is not None and self.ctx.cgroup is not None
        return self.ctx.cgroup

    def _run_pass(self, record: MemcgPass) -> None:
        cg = self.cgroup
        usage = cg.usage_bytes()
        target = squeeze_target(usage, self._option("squeeze", None), self._option("target_bytes", None))
        nbytes = usage - target
        record.usage_before = usage
        record.bytes_requested = max(0, nbytes)
        if nbytes < PAGE_SIZE:
            record.usage_after = usage
            record.did_nothing = (f"nothing to reclaim: the cgroup's usage, {format_bytes(usage)}, is already at or "
                                  f"below the target, {format_bytes(target)}")
            return
        stat = cg.stat()
        file_bytes = stat.get("total_inactive_file", stat.get("inactive_file", 0)) + \
            stat.get("total_active_file", stat.get("active_file", 0))
        if not swap_total_bytes() and file_bytes < nbytes:
            record.notes.append(f"no swap and only {format_bytes(file_bytes)} of page cache: the squeeze will stop "
                                "short")
        result = cg.reclaim(nbytes, steps=int(self._option("steps", 8)),
                            pause_s=float(self._option("step_pause_s", 0.0)))
        record.usage_after = result.usage_after
        record.counters = stat_delta(stat, cg.stat())
        record.bytes_reclaimed = result.reclaimed
        record.limit_steps = [{"method": result.method, "value": s.value, "usage_after": s.usage_after, "error": s.error}
                              for s in result.steps]
        record.errors.extend(f"{result.method} {s.value}: {s.error}" for s in result.steps if s.error)

    def _restore(self) -> None:
        if self.ctx is not None and self.ctx.cgroup is not None:
            self.ctx.cgroup.restore_limit()
