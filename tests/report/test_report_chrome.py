"""`kvmctl report trace`: Chrome trace-event structure Perfetto accepts."""

from __future__ import annotations

import json

import pytest

from kvmctl.errors import UsageError
from kvmctl.report.chrome import chrome_trace
from kvmctl.report.schema import Report
from tests.helpers.reports import make_report


def _events(trace, ph):
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def test_structure():
    r = make_report()
    trace = json.loads(json.dumps(chrome_trace(r)))  # plain JSON, nothing Python-only
    assert set(trace) == {"traceEvents", "displayTimeUnit", "otherData"}
    assert {e["ph"] for e in trace["traceEvents"]} == {"M", "X", "C"}
    named = {e["tid"]: e["args"]["name"] for e in _events(trace, "M") if e["name"] == "thread_name"}
    for e in _events(trace, "X"):
        assert isinstance(e["ts"], float) and e["ts"] >= 0 and e["dur"] > 0
        assert e["pid"] == 1 and e["tid"] in named and e["name"]
    epochs = [e for e in _events(trace, "X") if e["cat"] == "epoch"]
    passes = [e for e in _events(trace, "X") if e["cat"] == "ager"]
    assert len(epochs) == len(r.epochs) and len(passes) == len(r.passes)
    assert {named[e["tid"]] for e in epochs} == {"vCPU 0", "vCPU 1"}
    assert {named[e["tid"]] for e in passes} == {"ager memcg"}
    first = r.passes[0]
    p1 = next(e for e in passes if e["name"] == "pass 1")
    assert p1["ts"] == (first.start_ns - r.trace_window.start_ns) / 1000
    assert p1["dur"] == (first.end_ns - first.start_ns) / 1000
    assert p1["args"]["evicted_pages"] == first.evicted_pages


def test_counters_match_series():
    r = make_report()
    counters = _events(chrome_trace(r), "C")
    calls = [e for e in counters if e["name"] == "aging calls"]
    assert len(calls) == len(r.aging.series)
    for e, s in zip(calls, r.aging.series):
        assert e["ts"] == s.t_offset_ns / 1000
        assert e["args"]["experiment"] + e["args"]["background"] == s.calls
    pages = [e for e in counters if e["name"] == "pages aged"]
    assert sum(e["args"]["experiment"] + e["args"]["background"] for e in pages) == sum(s.pages for s in r.aging.series)


def test_epochs_without_timestamps_are_counted_not_invented():
    r = make_report()
    for e in r.epochs[:3]:
        e.start_ns = e.end_ns = None
    trace = chrome_trace(r)
    assert trace["otherData"]["epochs_without_timestamps"] == 3
    assert len([e for e in _events(trace, "X") if e["cat"] == "epoch"]) == len(r.epochs) - 3


def test_no_timestamps_at_all():
    with pytest.raises(UsageError, match="no timestamps"):
        chrome_trace(Report())


def test_rows_for_all_vcpus_get_their_own_track():
    r = make_report()
    r.epochs[0].vcpu = -1
    trace = chrome_trace(r)
    named = {e["tid"]: e["args"]["name"] for e in _events(trace, "M") if e["name"] == "thread_name"}
    assert named[99] == "guest (all vCPUs)"
