"""A pass row's window contains the aging calls it lists.

The calls of a pass are differences of the tracer's running totals read on
either side of it; the row's window runs from the first read to the second.
The aging time series (bucketed by each event's own timestamp in the BPF
program) is an independent count: the buckets that overlap a pass's window
must hold at least the calls the row lists. A passive pass takes well under
a millisecond, so a window that grew by a snapshot's hundreds of
milliseconds, or residency reads, shows at once.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root, pytest.mark.slow]


def _series_calls(report: dict, start_ns: int, end_ns: int) -> int:
    a, t0 = report["aging"], report["trace_window"]["start_ns"]
    step = a["interval_ns"]
    return sum(s["calls"] for s in a["series"]
               if t0 + s["t_offset_ns"] < end_ns and t0 + s["t_offset_ns"] + step > start_ns)


@pytest.mark.parametrize("ager", ["passive", "memcg"])
def test_each_pass_window_holds_the_calls_it_lists(experiment, ager):
    report = experiment("--mem", "128M", "--ager", ager, "--passes", "3", "--settle", "0.5s", "--interval", "10ms")
    assert report["complete"], report["incomplete_reason"]
    for row in report["passes"]:
        window = row["end_ns"] - row["start_ns"]
        assert 0 <= row["ager_ns"] <= window, row
        assert window - row["ager_ns"] < 200e6, f"pass {row['pass']}: counters read for {window - row['ager_ns']} ns"
        assert row["aging_calls"] <= _series_calls(report, row["start_ns"], row["end_ns"]), row
        assert row["background_calls"] <= row["aging_calls"], row


def test_the_report_shows_lockdown_as_info_does(experiment):
    import json
    import subprocess
    import sys

    info = json.loads(subprocess.run([sys.executable, "-m", "kvmctl", "info", "--json"], capture_output=True,
                                     text=True, timeout=300, check=True).stdout)
    report = experiment("--mem", "64M", "--ager", "passive", "--passes", "1", "--settle", "0.2s")
    assert report["host"]["lockdown"] == info["bpf"]["lockdown"]["value"]
