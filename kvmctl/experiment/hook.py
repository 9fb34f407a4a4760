"""How KVM answered the host's aging requests, and what they cost in mmu_lock.

On a kernel with the test_clear_young series (kernels/test-clear-young) every
aging request ends with ``kvm:kvm_age_notifier``, which names the path KVM
took, so the figures here are counted per request. Elsewhere they follow from
the kernel's code and the aging calls traced (``kvm_age_hva`` /
``kvm_test_age_hva``), and ``probes.derived`` says so; where the kernel's
configuration does not tell, they stay null with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmctl.report.schema import ClearYoungHook, NotifierPathRow
from kvmctl.trace.records import AgeOp, ContentionRow, NotifierCount, NotifierCounts, NotifierPath
from kvmctl.vocab import WaiterClass

SHARE = "aging.lockless_share"
ACQUISITIONS = "contention.aging_mmu_lock_acquisitions"
BEHIND = "contention.vcpu_wait_behind_aging_ns"
HOOK = "aging.test_clear_young"

HOOK_PATHS = (NotifierPath.LOCKLESS, NotifierPath.LOCKLESS_RMAP)
LOCK_PATHS = tuple(p for p in NotifierPath if p.takes_mmu_lock)
ANSWERED_PATHS = tuple(p for p in NotifierPath if not p.refused)  # a refused request is retried by a locked op

_LOCKLESS_KERNEL = ("CONFIG_KVM_MMU_LOCKLESS_AGING=y: KVM walks SPTEs for aging without mmu_lock (the "
                    "kernel's code, not traced per call; calls counted by kvm_age_hva/kvm_test_age_hva)")
_LOCKED_KERNEL = ("no test_clear_young hook and no CONFIG_KVM_MMU_LOCKLESS_AGING: KVM answers every "
                  "kvm_age_hva/kvm_test_age_hva request under mmu_lock held for write (the kernel's code, "
                  "not traced per call)")


@dataclass
class LockFigures:
    lockless_share: float | None
    acquisitions: int | None
    derived: dict[str, str] = field(default_factory=dict)  # figure -> how it follows
    not_observable: dict[str, str] = field(default_factory=dict)  # figure -> why it is null


def lock_figures(notifier: NotifierCounts | None, aging_calls: int | None,
                 lockless_aging: bool | None) -> LockFigures:
    """The share of aging calls KVM answered without mmu_lock for the TDP MMU, and the mmu_lock taken.

    ``notifier``: kvm_age_notifier counts (None on kernels without the tracepoint);
    ``aging_calls``: kvm_age_hva + kvm_test_age_hva calls (None when untraced);
    ``lockless_aging``: CONFIG_KVM_MMU_LOCKLESS_AGING (None when the config is unknown).
    """
    if notifier is not None:
        answered = notifier.total(paths=ANSWERED_PATHS).calls
        hook = notifier.total(ops=(AgeOp.TEST_CLEAR_YOUNG,), paths=HOOK_PATHS).calls
        out = LockFigures(hook / answered if answered else None, notifier.total(paths=LOCK_PATHS).calls)
        if not answered:
            out.not_observable[SHARE] = "no aging request on this VM's memory"
        return out
    if aging_calls is None:
        why = "aging calls were not traced"
        return LockFigures(None, None, not_observable={SHARE: why, ACQUISITIONS: why})
    if lockless_aging is None:
        why = ("whether aging takes mmu_lock depends on CONFIG_KVM_MMU_LOCKLESS_AGING, and this kernel's "
               "configuration is not readable")
        return LockFigures(None, None, not_observable={SHARE: why, ACQUISITIONS: why})
    how = _LOCKLESS_KERNEL if lockless_aging else _LOCKED_KERNEL
    out = LockFigures(None, 0 if lockless_aging else aging_calls, derived={ACQUISITIONS: how})
    if aging_calls:
        out.lockless_share = 1.0 if lockless_aging else 0.0
        out.derived[SHARE] = how
    else:
        out.not_observable[SHARE] = "no aging request on this VM's memory"
    return out


def path_rows(notifier: NotifierCounts) -> list[NotifierPathRow]:
    """One row per (op, path) seen, summed over task classes, most calls first."""
    sums: dict[tuple[AgeOp, NotifierPath], NotifierCount] = {}
    for (op, path, _cls), c in notifier.cells.items():
        if c.calls:
            sums.setdefault((op, path), NotifierCount()).add(c)
    rows = [NotifierPathRow(op.label, path.label, c.calls, c.pages, c.young, c.cleared,
                            c.total_ns // c.timed if c.timed else None, c.max_ns if c.timed else None)
            for (op, path), c in sums.items()]
    return sorted(rows, key=lambda r: (-r.calls, r.op, r.path))


def hook_figures(notifier: NotifierCounts, lru_gen_cap: str | None, nested_mode: str | None) -> ClearYoungHook:
    answered = notifier.total(ops=(AgeOp.TEST_CLEAR_YOUNG,), paths=HOOK_PATHS)
    return ClearYoungHook(
        calls=answered.calls, pages=answered.pages,
        pages_per_call=round(answered.pages / answered.calls, 2) if answered.calls else None,
        young=answered.young, cleared=answered.cleared,
        refused_nested=notifier.total(paths=(NotifierPath.REFUSED_NESTED,)).calls,
        refused_mmu=notifier.total(paths=(NotifierPath.REFUSED_MMU,)).calls,
        lru_gen_cap=lru_gen_cap, nested_mode=nested_mode)


def paths_by_label(notifier: NotifierCounts) -> dict[str, int]:
    """Requests per path over every op (a pass row's compact view)."""
    out: dict[str, int] = {}
    for (_op, path, _cls), c in notifier.cells.items():
        if c.calls:
            out[path.label] = out.get(path.label, 0) + c.calls
    return out


def behind_aging_ns(rows: list[ContentionRow] | None, sections_traced: bool, notifier_traced: bool,
                    lockless_aging: bool | None) -> tuple[int | None, str]:
    """vCPU waits on this VM's mmu_lock while a locked aging request ran, and how that was observed."""
    if sections_traced and rows is not None:
        total = sum(r.behind_aging_ns for r in rows if r.mmu_lock and r.waiter is WaiterClass.VM)
        return total, ("lock:contention_* waits of the VM's threads on its mmu_lock that overlapped a locked aging "
                       "request (begun by kvm_age_hva/kvm_test_age_hva, ended by kvm_age_notifier)")
    if rows is not None and not notifier_traced and lockless_aging:
        return 0, _LOCKLESS_KERNEL
    return None, ""
