"""Export a report's timeline in the Chrome trace-event format.

Perfetto UI and chrome://tracing open the JSON object form
(``{"traceEvents": [...]}``). Epochs become complete ("X") events on one track
per vCPU, ager passes on one track per ager, and the aging time series becomes
counter ("C") events. Timestamps are microseconds since the trace window
opened (CLOCK_MONOTONIC), so tracks of one report line up exactly.
"""

from __future__ import annotations

from typing import Any

from kvmctl.errors import UsageError
from kvmctl.report.schema import Report

PID = 1
TID_KVMCTL = 1
TID_VCPU_BASE = 100  # vCPU n -> tid 100 + n; rows for all vCPUs (vcpu -1) -> 99
TID_AGER_BASE = 1000  # ager tracks in order of first appearance


def _us(ns: int, origin: int) -> float:
    return (ns - origin) / 1000.0


def _origin(report: Report) -> int:
    if report.trace_window.start_ns is not None:
        return report.trace_window.start_ns
    starts = [e.start_ns for e in report.epochs if e.start_ns is not None] + [p.start_ns for p in report.passes]
    if not starts:
        raise UsageError(
            "the report has no timestamps to lay out (no trace window, epoch or pass times)",
            "re-run the experiment so that it records its trace window",
        )
    return min(starts)


def _meta(name: str, tid: int, value: str, sort_index: int | None = None) -> list[dict[str, Any]]:
    events = [{"ph": "M", "pid": PID, "tid": tid, "name": name, "args": {"name": value}}]
    if sort_index is not None:
        events.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": sort_index}})
    return events


def chrome_trace(report: Report) -> dict[str, Any]:
    origin = _origin(report)
    events: list[dict[str, Any]] = _meta("process_name", 0, f"kvmctl {report.report_kind.value}")
    events += _meta("thread_name", TID_KVMCTL, "kvmctl", 0)
    w = report.trace_window
    if w.start_ns is not None and w.end_ns is not None:
        events.append({"ph": "X", "pid": PID, "tid": TID_KVMCTL, "name": "probes attached", "cat": "trace",
                       "ts": 0.0, "dur": _us(w.end_ns, w.start_ns), "args": {"lost_events": report.lost_events}})

    skipped = 0
    vcpus_named: set[int] = set()
    for e in report.epochs:
        if e.start_ns is None or e.end_ns is None:
            skipped += 1
            continue
        tid = TID_VCPU_BASE + e.vcpu
        if e.vcpu not in vcpus_named:
            name = f"vCPU {e.vcpu}" if e.vcpu >= 0 else "guest (all vCPUs)"
            events += _meta("thread_name", tid, name, tid)
            vcpus_named.add(e.vcpu)
        events.append({
            "ph": "X", "pid": PID, "tid": tid, "name": f"epoch {e.epoch}", "cat": "epoch",
            "ts": _us(e.start_ns, origin), "dur": (e.end_ns - e.start_ns) / 1000.0,
            "args": {"pattern": e.pattern, "pages_touched": e.pages_touched,
                     "guest_seconds": e.guest_seconds, "wall_seconds": e.wall_seconds},
        })

    ager_tids: dict[str, int] = {}
    for p in report.passes:
        if p.ager not in ager_tids:
            ager_tids[p.ager] = TID_AGER_BASE + len(ager_tids)
            events += _meta("thread_name", ager_tids[p.ager], f"ager {p.ager}", ager_tids[p.ager])
        args = {k: v for k, v in {
            "hot_resident_fraction": p.hot_resident_fraction, "cold_resident_fraction": p.cold_resident_fraction,
            "evicted_pages": p.evicted_pages, "refaults": p.refaults, "aging_calls": p.aging_calls,
            "aging_pages": p.aging_pages, "background_calls": p.background_calls,
        }.items() if v is not None}
        events.append({"ph": "X", "pid": PID, "tid": ager_tids[p.ager], "name": f"pass {p.pass_no}", "cat": "ager",
                       "ts": _us(p.start_ns, origin), "dur": (p.end_ns - p.start_ns) / 1000.0, "args": args})

    # The series is relative to the trace window, which is the origin when present.
    series_origin = (w.start_ns if w.start_ns is not None else origin) - origin
    for s in report.aging.series:
        ts = (series_origin + s.t_offset_ns) / 1000.0
        events.append({"ph": "C", "pid": PID, "name": "aging calls", "ts": ts,
                       "args": {"experiment": s.calls - s.background_calls, "background": s.background_calls}})
        events.append({"ph": "C", "pid": PID, "name": "pages aged", "ts": ts,
                       "args": {"experiment": s.pages - s.background_pages, "background": s.background_pages}})

    other = {"kvmctl_version": report.kvmctl_version, "schema_version": report.schema_version,
             "complete": report.complete, "kernel": report.host.kernel_release,
             "report_kind": report.report_kind.value,
             "mmu": report.host.mmu.value if report.host.mmu else None,
             "clock": "CLOCK_MONOTONIC", "origin_ns": origin,
             "series_interval_ns": report.aging.interval_ns}
    if skipped:
        other["epochs_without_timestamps"] = skipped
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}
