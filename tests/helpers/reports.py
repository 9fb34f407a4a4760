"""Synthetic but realistic reports: test inputs for the (pure) renderers.

Shapes follow what an experiment on the development host produces: a 512 MiB
file-backed guest, 2 vCPUs, hotcold:0.25, memcg reclaim passes, DAMON's
background aging, shadow paging (PVM) — plus a TDP-host variant where bits
cleared and the TDP path are observable. Everything is derived from a seeded
generator so golden files stay stable.
"""

from __future__ import annotations

import random

from kvmctl.trace.hist import log2_buckets
from kvmctl.report.schema import (Aging, AgingSample, Bucket, ClearYoungHook, Contention, ContentionRow, EpochRow,
                                  Fallback, GroundTruth, Harvest, HarvestDisagreement, Headers, HeatMap, HostFacts,
                                  Memslot, Mmu, NotifierPathRow, PassCost, PassRow, Probes, Report, TaskAging,
                                  TaskClass, TraceWindow, Verdict, WaiterClass)
from kvmctl.report.figures import headline_figures

MIB = 1 << 20
T0 = 1_000_000_000_000  # CLOCK_MONOTONIC at probe attach


def make_report(*, tdp: bool = False, seed: int = 1, scale: float = 1.0, passes: int = 4, epochs: int = 8) -> Report:
    rng = random.Random(seed)
    size = 512 * MIB
    pages = size // 4096
    hot = pages // 4
    slot = Memslot(0, 0x100000000, 0x100000000 + size, 0x7F3A40000000, 0x7F3A40000000 + size, size, "file",
                   "/var/tmp/kvmctl-guest.mem")
    interval = 1_000_000_000
    n_samples = 12
    series = []
    for i in range(n_samples):
        bg = int(1400 * scale) + rng.randint(-40, 40)
        ours = int(4200 * scale) + rng.randint(-200, 200) if i % 3 == 1 else rng.randint(0, 20)
        series.append(AgingSample(i * interval, bg + ours, (bg + ours) * 3, bg, bg * 3))
    calls = sum(s.calls for s in series)
    bg_calls = sum(s.background_calls for s in series)
    window = TraceWindow(T0, T0 + n_samples * interval)

    pass_rows = []
    for p in range(1, passes + 1):
        start = T0 + (3 * p - 2) * interval
        evicted = int(pages * 0.5 / passes)
        pass_rows.append(PassRow(p, "memcg", start, start + 400_000_000 + rng.randint(0, 50_000_000),
                                 hot_resident_fraction=1.0 - rng.randint(0, 3) / hot,
                                 cold_resident_fraction=1.0 - 0.5 * p / passes * (pages / (pages - hot)),
                                 evicted_pages=evicted, refaults=rng.randint(0, 3),
                                 aging_calls=int(4200 * scale), aging_pages=int(12600 * scale),
                                 background_calls=(bg := 560 + rng.randint(-20, 20)), ours_calls=int(4200 * scale) - bg,
                                 touched_pages=hot, cold_pages=pages - hot))
    epoch_rows = []
    t = T0
    for e in range(epochs):
        for v in range(2):
            guest = 0.180 + rng.random() * 0.01
            epoch_rows.append(EpochRow(e, v, "hotcold:0.25", hot // 2 + (pages - hot) // 2 // 8, guest, guest + 0.004,
                                       start_ns=t, end_ns=t + int((guest + 0.004) * 1e9)))
        t += interval + interval // 2

    aged = {slot.gpa_start // 4096 + g: (3 if g < hot else 1) for g in range(0, pages, 7)}
    touched = {slot.gpa_start // 4096 + g: epochs for g in range(hot)}
    heat = HeatMap.from_gfn_counts(slot, aged, touched)

    lat = log2_buckets([0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 340, 2210, 1830, 410, 35, 4, 1], dense=True)
    wait_vcpu = [Bucket(0, 1, 0), Bucket(2, 3, 0), Bucket(4, 7, 0), Bucket(8, 15, 0), Bucket(16, 31, 0),
                 Bucket(32, 63, 0), Bucket(64, 127, 0), Bucket(128, 255, 2), Bucket(256, 511, 9),
                 Bucket(512, 1023, 31), Bucket(1024, 2047, 18), Bucket(2048, 4095, 5)]
    rows = [
        ContentionRow(65, 812_440, 3_920, 12_499, "rwlock:W", "kvm_mmu_page_fault+0x1b7", WaiterClass.VM, True,
                      "0xffff8f2a41c0a148"),
        ContentionRow(19, 13_580_000, 1_170_000, 714_736, "spinlock", "__lock_task_sighand+0x3e", WaiterClass.OTHER,
                      False),
        ContentionRow(7, 41_200, 9_900, 5_885, "rwlock:W", "kvm_mmu_notifier_invalidate_range_start+0x91",
                      WaiterClass.AGER, True, "0xffff8f2a41c0a148"),
        ContentionRow(3, 2_950, 1_400, 983, "spinlock", "try_to_wake_up+0x62", WaiterClass.OTHER, False),
        ContentionRow(2, 1_900, 1_100, 950, "spinlock", "try_to_wake_up+0x62", WaiterClass.AGER, False),
        ContentionRow(411, 402_300, 21_800, 978, "spinlock", "", WaiterClass.OTHER, False, "0xffff888627c2ba40"),
    ]
    not_obs: dict[str, str] = {
        "ground_truth.precision": "the memcg ager reports no young/idle bits (needs MGLRU or idle page tracking)",
        "ground_truth.recall": "the memcg ager reports no young/idle bits (needs MGLRU or idle page tracking)",
        "ground_truth.passes_to_adapt": "the hot set did not move between passes",
    }
    if not tdp:
        not_obs["function_latency"] = "kprobes and fentry are unavailable (CONFIG_KPROBES off)"
        not_obs["aging.bits_cleared"] = (
            "no TDP MMU (shadow paging): kvmmmu:kvm_tdp_mmu_spte_changed never fires"
        )
    report = Report(
        complete=True,
        created="2026-11-25T15:00:00+00:00",
        command_line=["kvmctl", "experiment", "--size", "512M", "--backing", "file", "--pattern", "hotcold:0.25",
                      "--ager", "memcg", "--output", "report.json"],
        host=HostFacts("6.18.0" if not tdp else "6.18.0-tdp", "x86_64", "kvm_intel" if tdp else "kvm_pvm",
                       Mmu.TDP if tdp else Mmu.SHADOW, tdp, True, Headers.MISMATCHED, "6.1.0-28-amd64", 2,
                       24 << 30, lockdown="integrity"),
        spec={"size": "512M", "vcpus": 2, "backing": "file", "pattern": "hotcold:0.25", "epochs": epochs,
              "ager": "memcg", "passes": passes, "squeeze": 0.5},
        probes=Probes(
            chosen={"aging_calls": "tracepoint:kvm:kvm_age_hva", "test_age": "tracepoint:kvm:kvm_test_age_hva",
                    "spte_map": "tracepoint:kvmmmu:kvm_mmu_set_spte",
                    "lock_contention": "tracepoint:lock:contention_begin/end"}
            | ({"bits_cleared": "tracepoint:kvmmmu:kvm_tdp_mmu_spte_changed"} if tdp else {}),
            not_observable=not_obs,
        ),
        trace_window=window,
        memslots=[slot],
        aging=Aging(calls, calls * 3, calls - bg_calls, (calls - bg_calls) * 3, bg_calls, bg_calls * 3, int(calls * 2.1) if tdp else None, interval,
                    [TaskAging(4242, "python3", TaskClass.OURS, calls - bg_calls, (calls - bg_calls) * 3),
                     TaskAging(88, "kdamond.0", TaskClass.KDAMOND, bg_calls - 31, (bg_calls - 31) * 3),
                     TaskAging(71, "kswapd0", TaskClass.KSWAPD, 31, 93)],
                    series),
        histograms=({"kvm_age_gfn latency ns": lat} if tdp else {}) | {"lock wait ns (vm)": wait_vcpu},
        contention=Contention(812_440 + 41_200, 72, rows),
        ground_truth=GroundTruth(hot, pages - hot, 0.99994, 0.3333, pages // 2, 0.99987, 3, None, None, "memcg"),
        fallback=Fallback(
            Verdict.TDP if tdp else Verdict.RMAP_SHADOW, 1.0 if tdp else 0.0, 0.0 if tdp else 1.0,
            ["kvm.tdp_mmu=Y, kvm_tdp_mmu_spte_changed fired 51,230 times"] if tdp else
            ["kvm.tdp_mmu=N (module kvm_pvm: shadow paging)",
             "VM stat max_mmu_rmap_size=3 > 0: rmaps are in use",
             "kvmmmu:kvm_mmu_get_page fired 1,046 times (shadow pages created)"],
        ),
        lost_events=0,
        epochs=epoch_rows,
        passes=pass_rows,
        heatmaps=[heat],
        vm_stats={"pages_4k": 131072, "pages_2m": 0, "mmu_cache_miss": 1046, "mmu_shadow_zapped": 12,
                  "max_mmu_rmap_size": 3, "mmu_pte_write": 0},
        notes=["DAMON's foreign kdamond aged guest memory throughout; counted as background, never stopped.",
               "BCC compiled against mismatched headers (6.1.0-28-amd64); tracepoint programs only."],
    )
    # a 6.18 host ages without mmu_lock (CONFIG_KVM_MMU_LOCKLESS_AGING=y)
    lockless = ("CONFIG_KVM_MMU_LOCKLESS_AGING=y: KVM walks SPTEs for aging without mmu_lock (the kernel's code, "
                "not traced per call; calls counted by kvm_age_hva/kvm_test_age_hva)")
    report.aging.lockless_share = 1.0
    report.contention.aging_mmu_lock_acquisitions = 0
    report.contention.vcpu_wait_behind_aging_ns = 0
    report.probes.derived = {"aging.lockless_share": lockless, "contention.aging_mmu_lock_acquisitions": lockless,
                             "contention.vcpu_wait_behind_aging_ns": lockless}
    report.probes.not_observable["aging.test_clear_young"] = (
        "this kernel lacks the test_clear_young series (no kvm_arch_test_clear_young, no kvm:kvm_age_notifier)")
    if tdp:
        report.aging.harvest = Harvest(24_576, 24_580, 24_570, 24_570 / 24_580, 24_570 / 24_576, passes,
                                       [HarvestDisagreement(0x100012, 2, True, False,
                                                            "p0: touched, mapped, aged, while mapped, cleared; "
                                                            "p1: touched, unmapped; p2: touched, aged")])
    else:
        report.probes.not_observable["aging.harvest"] = (
            "the accessed bits aging clears are not observable: no TDP MMU (shadow paging)")
    if pass_rows:
        window = sum(p.end_ns - p.start_ns for p in pass_rows) / len(pass_rows)
        report.aging.pass_cost = PassCost("pass window (wall time of the ager's pass: the host's own walk and "
                                          "reclaim included)", window / 1e9, window / 1e9 / 0.5, window / pages,
                                          0.31, 0.62)
    return report


def make_hook_report(*, cap: bool = True, seed: int = 1) -> Report:
    """A lab report from a kernel with the test_clear_young series: cap 0x0008 on (or off), MGLRU ager."""
    report = make_report(tdp=True, seed=seed)
    report.host.kernel_release = "6.1.192-kvmctl-lab-test-clear-young"
    report.host.kvm_module, report.host.lockless_aging = "kvm_amd", False
    report.host.test_clear_young = {"symbol": "kvm_arch_test_clear_young", "tracepoint": True,
                                    "lru_gen_cap": "on" if cap else "off", "lru_gen_cap_bit": "0x0008",
                                    "nested_mode": "v1"}
    report.probes.derived = {}
    del report.probes.not_observable["aging.test_clear_young"]
    report.probes.chosen["aging.notifier_paths"] = "tracepoint:kvm:kvm_age_notifier"
    calls = report.aging.calls
    if cap:
        report.aging.paths = [NotifierPathRow("test_clear_young", "lockless", calls, calls * 5, 24_702, 24_702)]
        report.aging.lockless_share = 1.0
        report.aging.test_clear_young = ClearYoungHook(calls, calls * 5, 5.0, 24_702, 24_702, 0, 0, "on", "v1")
        report.contention.aging_mmu_lock_acquisitions = 0
        report.contention.vcpu_wait_behind_aging_ns = 0
    else:
        report.aging.paths = [NotifierPathRow("clear_flush_young", "locked", calls, calls, 0, 0)]
        report.aging.lockless_share = 0.0
        report.aging.test_clear_young = ClearYoungHook(0, 0, None, 0, 0, 0, 0, "off", "v1")
        report.contention.aging_mmu_lock_acquisitions = calls
        report.contention.vcpu_wait_behind_aging_ns = 3_230_000_000
    for row in report.passes:
        row.notifier_paths = {"lockless": row.aging_calls} if cap else {"locked": row.aging_calls}
        row.lockless_share = 1.0 if cap else 0.0
        row.mmu_lock_acquisitions = 0 if cap else row.aging_calls
        row.hook_cleared = 8_192 if cap else 0
    return report


def with_repeats(report: Report, n: int, seed: int, spread: float = 0.02) -> Report:
    """Attach ``n`` repeats jittered around the report's headline figures."""
    rng = random.Random(seed)
    base = headline_figures(report)
    for _ in range(n):
        rep = {}
        for key, value in base.items():
            if value is None or key.endswith("share") or key == "lost_events":  # structural, not noisy
                rep[key] = value
            elif key.endswith("fraction"):
                rep[key] = min(1.0, value * (1 + rng.uniform(-spread, spread) / 100))
            else:
                rep[key] = round(value * (1 + rng.uniform(-spread, spread)))
        report.repeats.append(rep)
    return report


def make_watch_report() -> Report:
    """A watch of a QEMU with 512 MiB file-backed RAM, ranges from QMP: what `kvmctl watch` writes."""
    from kvmctl.report.schema import PassiveSample, ReportKind, WatchTarget

    report = make_report(passes=0, epochs=0)
    size = 512 * MIB
    slot = Memslot.host_range(0x7FEDC3FFF000, size, "file", "qmp", "/var/tmp/qemu-ram.img", gpa=0)
    aged = [0] * (size // 4096)
    for g in range(0, len(aged), 5):
        aged[g] = 2
    import numpy as np

    present = np.ones(size // 4096, dtype=bool)
    present[len(present) // 2:] = False
    report.report_kind = ReportKind.WATCH
    report.command_line = ["kvmctl", "watch", "--pid", "4711", "--qmp", "/run/vm.qmp", "-o", "w.json"]
    report.spec = {"pid": 4711, "qmp": "/run/vm.qmp", "duration_s": 20.0, "interval_s": 1.0}
    report.memslots = [slot]
    report.heatmaps = [HeatMap.from_host_pages(slot, np.array(aged), present, present & (np.arange(len(present)) % 3 == 0))]
    report.target = WatchTarget(4711, "qemu-system-x86", ["qemu-system-x86_64", "-accel", "kvm", "-m", "512M"],
                                [4730, None], 1, "qmp", "/kvmctl-4700-qemu", "/run/vm.qmp", 4, 0)
    report.passive = [PassiveSample(i * 1_000_000_000, size - i * (16 * MIB), size // 2, 0, 0, 95 + i)
                      for i in range(1, 13)]
    report.memcg_stats = {"pgscan": 65536, "workingset_refault_file": 12}
    report.aging.by_task = [TaskAging(77, "kdamond.0", TaskClass.KDAMOND, 900_000, 900_000),
                            TaskAging(4702, "python3", TaskClass.OTHER, 205_000, 205_000)]
    report.aging.by_class = {"kdamond": 900_000, "other": 205_000}
    report.aging.ambiguous_calls, report.aging.ambiguous_pages = 0, 0
    report.ground_truth = GroundTruth()
    for figure in ("ground_truth.hot_resident_fraction", "ground_truth.evicted_cold_fraction",
                   "ground_truth.refaults", "ground_truth.precision", "ground_truth.recall"):
        report.probes.not_observable[figure] = "a watched VM: kvmctl does not know which pages its guest touched"
    return report
