"""Lock figures of aging: counted per request where kvm_age_notifier exists, derived from the kernel elsewhere."""

from __future__ import annotations

from kvmctl.experiment import hook
from kvmctl.trace.records import AgeOp, ContentionRow, NotifierCount, NotifierCounts, NotifierPath
from kvmctl.vocab import TaskClass, WaiterClass

OURS, KD = TaskClass.OURS, TaskClass.KDAMOND


def counts(**cells: tuple[int, int, int, int]) -> NotifierCounts:
    """Cells named op__path (path with _ for + and :), values (calls, pages, young, cleared)."""
    out = {}
    for name, (calls, pages, young, cleared) in cells.items():
        op, path = name.split("__")
        out[(AgeOp[op.upper()], NotifierPath[path.upper()], OURS)] = NotifierCount(calls, pages, young, cleared)
    return NotifierCounts(out)


def test_cap_on_every_request_through_the_hook():
    n = counts(test_clear_young__lockless=(26542, 127429, 24702, 24702))
    f = hook.lock_figures(n, 0, False)
    assert f.lockless_share == 1.0 and f.acquisitions == 0 and not f.derived
    h = hook.hook_figures(n, "on", "v1")
    assert (h.calls, h.pages_per_call, h.cleared, h.refused_nested) == (26542, 4.8, 24702, 0)


def test_v1_refusals_are_retried_and_count_once():
    n = counts(test_clear_young__lockless=(834, 900, 6, 6), test_clear_young__refused_nested=(8434, 8434, 0, 0),
               clear_flush_young__locked=(8183, 8183, 7680, 7680))
    f = hook.lock_figures(n, 8183, False)
    assert f.acquisitions == 8183
    assert f.lockless_share == 834 / (834 + 8183)
    assert hook.hook_figures(n, "on", "v1").refused_nested == 8434
    assert hook.paths_by_label(n) == {"lockless": 834, "refused:nested": 8434, "locked": 8183}


def test_fixed_mode_counts_the_rmap_walk_as_a_lock_acquisition():
    n = counts(test_clear_young__lockless=(1341, 2000, 24, 24), test_clear_young__lockless_rmap=(242, 400, 15408, 15408))
    f = hook.lock_figures(n, 0, False)
    assert f.lockless_share == 1.0 and f.acquisitions == 242
    rows = hook.path_rows(n)
    assert [(r.op, r.path, r.calls) for r in rows] == [("test_clear_young", "lockless", 1341),
                                                       ("test_clear_young", "lockless+rmap", 242)]


def test_stock_kernels_are_derived_and_say_so():
    locked = hook.lock_figures(None, 24594, False)
    assert locked.lockless_share == 0.0 and locked.acquisitions == 24594
    assert "every kvm_age_hva/kvm_test_age_hva request under mmu_lock" in locked.derived[hook.ACQUISITIONS]
    free = hook.lock_figures(None, 100, True)
    assert free.lockless_share == 1.0 and free.acquisitions == 0 and "LOCKLESS_AGING=y" in free.derived[hook.SHARE]
    unknown = hook.lock_figures(None, 100, None)
    assert unknown.lockless_share is None and "configuration is not readable" in unknown.not_observable[hook.SHARE]
    idle = hook.lock_figures(None, 0, False)
    assert idle.lockless_share is None and idle.acquisitions == 0
    assert hook.lock_figures(None, None, False).not_observable[hook.SHARE] == "aging calls were not traced"


def test_behind_aging_sums_vcpu_waits_on_mmu_lock_only():
    def row(waiter, mmu, behind):
        return ContentionRow(1, waiter, 0x10, "rwlock:R", "f", [], 100, 10, 1, mmu, behind)

    rows = [row(WaiterClass.VM, True, 70), row(WaiterClass.VM, False, 5), row(WaiterClass.AGER, True, 9)]
    assert hook.behind_aging_ns(rows, True, True, False)[0] == 70
    assert hook.behind_aging_ns(rows, False, False, True)[0] == 0  # lockless-aging kernel: derived
    assert hook.behind_aging_ns(rows, False, False, False)[0] is None
    assert hook.behind_aging_ns(None, False, True, False)[0] is None


def test_a_pass_is_the_difference_of_two_snapshots():
    before = counts(test_clear_young__lockless=(10, 50, 5, 5))
    after = counts(test_clear_young__lockless=(30, 150, 20, 20), clear_flush_young__locked=(4, 4, 1, 1))
    during = after.minus(before)
    assert during.total().calls == 24 and during.total(paths=(NotifierPath.LOCKED,)).young == 1
    assert KD not in {k[2] for k in during.cells}
