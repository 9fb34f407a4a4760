"""Three experiments at once on one host: each sees only its own VM and writes its own report.

The aging tracepoints carry host virtual addresses only, so the tracer tells
VMs apart by their memslots' hva ranges (each VM lives in its own process and
address space); the test checks those ranges are disjoint, that no report
counts another experiment's ager or VM threads, that every report saw its own
ager at work, and that the cgroups carry the creating pid so they never
collide.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from tests.helpers.hoststate import (
    HostState,
    Outcome,
    assert_nothing_left,
    bpf_prog_ids_of,
    kvmctl_cgroups,
    kvmctl_cmd,
    private_env,
)

pytestmark = [pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root, pytest.mark.slow]
N = 3


def test_three_experiments_at_once(tmp_path):
    before = HostState.capture()
    procs, outs = [], []
    for i in range(N):
        d = tmp_path / f"exp{i}"
        d.mkdir()
        outs.append(d / "report.json")
        procs.append(subprocess.Popen(
            kvmctl_cmd("experiment", "--mem", "128M", "--passes", "2", "-q", "-o", str(outs[-1])),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=private_env(d / "tmp"), cwd=d))
    cgroups: dict[int, set[str]] = {p.pid: set() for p in procs}
    bpf: dict[int, set[int]] = {p.pid: set() for p in procs}
    deadline = time.monotonic() + 240
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for p in procs:
                cgroups[p.pid].update(kvmctl_cgroups(p.pid))
                bpf[p.pid] |= bpf_prog_ids_of(p.pid)
            time.sleep(0.2)
        errs = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    reports = [json.loads(o.read_text()) for o in outs]
    assert all(r["complete"] for r in reports)

    # cgroups: named after the creating pid, one per experiment, never shared
    for pid, names in cgroups.items():
        assert names and all(n.startswith(f"kvmctl-{pid}-") for n in names), names
    assert len(set().union(*cgroups.values())) == sum(len(n) for n in cgroups.values())
    # BPF programs: each experiment loaded its own
    assert all(bpf.values()) and not set.intersection(*bpf.values())

    # memslots: disjoint hva ranges, the only thing the aging tracepoints tell VMs apart by
    ranges = [(m["hva_start"], m["hva_end"], i) for i, r in enumerate(reports) for m in r["memslots"]]
    for a in ranges:
        for b in ranges:
            if a[2] < b[2]:
                assert a[1] <= b[0] or b[1] <= a[0], f"reports {a[2]} and {b[2]} share host addresses: {a} {b}"

    # aging by task: our own ager seen by each, nobody else's ager or VM threads
    own = []
    for r in reports:
        rows = r["aging"]["by_task"]
        ours = [t for t in rows if t["class"] == "ours"]
        assert ours and all(t["calls"] > 0 for t in ours), rows
        assert r["aging"]["calls"] >= sum(t["calls"] for t in ours)
        own.append({t["pid"] for t in rows if t["class"] in ("ours", "vm")})
    for i, r in enumerate(reports):
        seen = {t["pid"] for t in r["aging"]["by_task"]}
        for j in range(N):
            if j != i:
                assert not seen & own[j], f"report {i} counted experiment {j}'s threads: {seen & own[j]}"

    for p, d in zip(procs, (o.parent for o in outs)):
        assert_nothing_left(Outcome(p.pid, p.returncode, "", "", bpf[p.pid]), d, before)
