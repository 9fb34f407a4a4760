"""`kvmctl watch --pid` on real QEMUs: the RAM QMP names, counts an independent tracefs count agrees
with, the ambiguity of addresses two VMs share, a QEMU that exits mid-watch, and Ctrl-C.

The watch runs as the command a user types (a subprocess); QEMU runs in a
cgroup of the test's own, which the test squeezes (memcg v1 reclaim in the
test's thread: class "other" to the watch) while the machine's kdamond ages
the same pages in the background.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kvmctl.probe.tracing import require_tracefs
from kvmctl.report.files import load_report
from kvmctl.watch.qmp import Qmp, parse_gpa2hva
from tests.helpers.hoststate import ERROR_RE, kvmctl_cmd
from tests.helpers.qemu import MIB, Qemu
from tests.helpers.tracefs import PipeCounter, TracefsInstance

pytestmark = [pytest.mark.bpf, pytest.mark.kvm, pytest.mark.root, pytest.mark.slow]

AGING_EVENTS = {"kvm_age_hva", "kvm_test_age_hva"}


def _start_watch(qemu: Qemu, out: Path, *extra: str) -> subprocess.Popen:
    """`kvmctl watch` on ``qemu``; returns once its probes count (it says so on stderr)."""
    proc = subprocess.Popen(kvmctl_cmd("watch", "--pid", str(qemu.pid), "-o", str(out), *extra),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "watching process" in line:
            return proc
    proc.wait()
    pytest.fail(f"kvmctl watch exited {proc.returncode} before tracing: {''.join(lines)[-600:]}")


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _squeeze(qemu: Qemu, limit: int, after_s: float) -> threading.Thread:
    """Lower the cgroup's limit in a thread of this test (memcg v1: reclaim in the writer's context)."""
    def run() -> None:
        time.sleep(after_s)
        try:
            qemu.cg.set_limit(limit)
        except Exception:  # noqa: BLE001 - EBUSY: reclaimed what it could
            pass

    t = threading.Thread(target=run)
    t.start()
    return t


def _gpa2hva0(qemu: Qemu) -> int:
    """Where QEMU itself says guest-physical address 0 is in its address space."""
    qmp = Qmp(qemu.qmp, qemu.pid)
    try:
        return parse_gpa2hva(qmp.hmp("gpa2hva 0"))
    finally:
        qmp.close()


def test_watch_finds_qmp_ram_and_its_counts_match_tracefs(own, tmp_path):
    qemu = Qemu(own, "watch-ram")
    try:
        hva0 = _gpa2hva0(qemu)
        end = hva0 + qemu.size
        filters = {"kvm:kvm_age_hva": f"start < {end} && end > {hva0}",
                   "kvm:kvm_test_age_hva": f"hva >= {hva0} && hva < {end}"}
        out = tmp_path / "w.json"
        with TracefsInstance(require_tracefs(), filters, buffer_kb=65536) as inst, \
                PipeCounter(inst, tmp_path / "trace.txt") as pipe:
            watch = _start_watch(qemu, out, "--qmp", qemu.qmp, "--duration", "20s")
            squeeze = _squeeze(qemu, 256 * MIB, after_s=5)
            rc, err = _finish(watch)
            squeeze.join()
            qemu.cg.restore_limit()
            inst.disable()
            pipe.stop()
            overrun = pipe.overrun
            t0 = time.monotonic()
            pipe.between(AGING_EVENTS, 0, 1)
            parse_s = time.monotonic() - t0
        assert rc == 0, err
        report = load_report(out)
    finally:
        qemu.close()

    assert report.complete and report.report_kind.value == "watch"
    (ram,) = report.memslots
    assert (ram.hva_start, ram.size, ram.gpa_start, ram.source, ram.backing) == (hva0, qemu.size, 0, "qmp", "file")
    assert report.target.pid == qemu.pid and report.target.ram_source == "qmp"
    assert report.target.vcpu_tids and all(report.target.vcpu_tids)
    assert overrun == 0, f"the tracefs instance lost {overrun} events: enlarge its buffer"
    w = report.trace_window
    inside, edge = pipe.between(AGING_EVENTS, w.start_ns, w.end_ns)
    calls = report.aging.calls
    print(f"\nwatch: aging.calls {calls:,} (+{report.aging.ambiguous_calls} ambiguous) over "
          f"{(w.end_ns - w.start_ns) / 1e9:.3f} s; tracefs instance {inside:,} (+{edge} at the edges); "
          f"by class {report.aging.by_class}; lost {report.lost_events}; tracefs lines parsed in {parse_s:.1f} s")
    assert inside > 10_000, "too few aging events to compare: did the squeeze or kdamond age nothing?"
    assert abs(calls + report.aging.ambiguous_calls - inside) <= 0.02 * inside + edge
    assert abs(calls - inside) <= 0.02 * inside + edge
    assert report.lost_events == 0, [n for n in report.notes if n.startswith("lost events")]
    assert report.aging.by_class.get("other", 0) > 0, "the squeeze (this test's thread) aged nothing"
    assert report.passive and any(p.rss_bytes is not None for p in report.passive)
    assert report.target.rescans >= 1 and report.target.range_changes == 0
    assert report.heatmaps and report.heatmaps[0].resident is not None
    assert report.fallback.verdict is not None


def test_two_vms_at_the_same_addresses_make_their_events_ambiguous(own, tmp_path):
    a = b = c = None
    try:
        a = Qemu(own, "watch-a", 128 * MIB, aslr=False)
        b = Qemu(own, "watch-b", 128 * MIB, aslr=False)  # the same layout as a
        c = Qemu(own, "watch-c", 128 * MIB)
        b_ram = _gpa2hva0(b)
        outs = {}
        for q, name in ((a, "a"), (c, "c")):
            watch = _start_watch(q, tmp_path / f"{name}.json", "--qmp", q.qmp, "--duration", "4s")
            squeeze = _squeeze(q, 64 * MIB, after_s=1)
            rc, err = _finish(watch)
            squeeze.join()
            q.cg.restore_limit()
            assert rc == 0, err
            outs[name] = load_report(tmp_path / f"{name}.json")
    finally:
        for q in (a, b, c):
            if q is not None:
                q.close()
    ra, rc_ = outs["a"], outs["c"]
    assert ra.memslots[0].hva_start == b_ram, "without ASLR, a's RAM should be at b's address"
    assert rc_.memslots[0].hva_start != b_ram  # c is randomised
    assert ra.aging.ambiguous_calls > 0, "a's RAM is at b's addresses: its events must be ambiguous"
    assert ra.aging.calls == 0, "an event on an address b maps too cannot be counted as a's alone"
    assert rc_.aging.ambiguous_calls == 0 and rc_.aging.calls > 0
    (ram,) = rc_.memslots  # with --qmp: the block's guest-physical place too, and QEMU's own KVM stats
    assert (ram.gpa_start, ram.source, ram.size, rc_.target.ram_source) == (0, "qmp", 128 * MIB, "qmp")
    assert rc_.vm_stats and rc_.vcpu_stats.get("exits", 0) > 0
    assert any("ambiguous" in n for n in ra.notes)


def test_a_qemu_that_exits_mid_watch_and_ctrl_c_leave_partial_reports(own, tmp_path):
    qemu = Qemu(own, "watch-exit", 128 * MIB)
    try:
        hva0 = _gpa2hva0(qemu)
        watch = _start_watch(qemu, tmp_path / "int.json", "--duration", "60s")
        time.sleep(2)
        watch.send_signal(signal.SIGINT)
        rc, err = _finish(watch)
        assert rc == 130, err
        interrupted = load_report(tmp_path / "int.json")
        assert not interrupted.complete and "SIGINT" in interrupted.incomplete_reason
        # without --qmp, from the mappings QEMU marked dc: its RAM blocks (main RAM, firmware, ROMs)
        assert interrupted.target.ram_source == "smaps"
        ram = [(m.hva_start, m.size, m.source) for m in interrupted.memslots if m.size == qemu.size]
        assert ram == [(hva0, qemu.size, "smaps")], interrupted.memslots

        watch = _start_watch(qemu, tmp_path / "exit.json", "--duration", "60s")
        time.sleep(2)
        qemu.exit()
        rc, err = _finish(watch)
    finally:
        qemu.close()
    assert rc == 1, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("kvmctl: error:")]
    assert ERROR_RE.match(line) and f"process {qemu.pid} exited" in line
    gone = json.loads((tmp_path / "exit.json").read_text())
    assert gone["complete"] is False and gone["target"]["exited_ns"] is not None
    assert gone["trace_window"]["end_ns"] is not None and gone["memslots"][0]["source"] == "smaps"
