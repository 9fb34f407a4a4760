"""`kvmctl watch`: how the host ages the memory of a VM kvmctl did not create, seen from outside.

    target.py   the process: its KVM descriptors, vCPU threads, memcg (procfs, read-only)
    ranges.py   its guest RAM in its mappings, and the pieces other KVM processes map too (pure)
    qmp.py      QEMU's monitor: RAM blocks and their guest-physical place, vCPU threads, KVM stats
    signals.py  passive samples: smaps, memcg stats, read-only debugfs stats, pagemap + kpageflags
    runner.py   the watch: discover, trace, sample each interval, rescan, fill the report
    live.py     the live table

Strictly passive: nothing is written to the process, none of its descriptors
is duplicated or used, no cgroup or DAMON setting changes, and only debugfs
files without write bits are read.
"""
