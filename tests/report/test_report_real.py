"""A report from a real `kvmctl experiment` honours the contract every renderer relies on.

The synthetic fixtures test rendering; this runs the real producer once (a
small VM, one memcg pass) and feeds its report through show, html, trace and
diff, so that a field the experiment fills differently from the schema shows
up here and not on a user's machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvmctl.report.figures import REQUIRED_FIGURES
from kvmctl.report.files import load_report
from kvmctl.report.textual import WIDTH
from tests.helpers.pages import chromium, parse, run_chromium

pytestmark = [pytest.mark.kvm, pytest.mark.root, pytest.mark.slow]


def kvmctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmctl", *args], capture_output=True, text=True, timeout=600)


def _experiment(path, *extra: str):
    run = kvmctl("experiment", "--mem", "64M", "--passes", "1", "--output", str(path), "--quiet", *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    return path


def _check_contract(path):
    data = json.loads(path.read_text())
    for key in REQUIRED_FIGURES + ("schema_version", "complete", "probes.chosen", "probes.not_observable", "memslots"):
        node = data
        for part in key.split("."):
            assert part in node, f"{key} missing from a real report"
            node = node[part]
    report = load_report(path)
    assert report.complete
    assert report.unexplained_nulls() == []  # every null figure says why
    assert report.memslots and all(m.gpa_end - m.gpa_start == m.size == m.hva_end - m.hva_start
                                   for m in report.memslots)
    return report


def _check_renderers(path, tmp_path):
    show = kvmctl("report", "show", str(path))
    assert show.returncode == 0, show.stderr
    assert all(len(line) <= WIDTH for line in show.stdout.splitlines())
    assert kvmctl("report", "html", str(path), "-o", str(tmp_path / "r.html")).returncode == 0
    assert kvmctl("report", "trace", str(path), "-o", str(tmp_path / "r.trace.json")).returncode == 0
    same = kvmctl("report", "diff", "--json", str(path), str(path))
    assert same.returncode == 0
    figures = json.loads(same.stdout)["comparisons"][0]["figures"]
    assert all(f["delta"] in (0, None) for f in figures)
    return (tmp_path / "r.html").read_text()


def test_untraced_report(tmp_path):
    report = _check_contract(_experiment(tmp_path / "r.json", "--no-trace"))
    assert report.aging.calls is None
    page = _check_renderers(tmp_path / "r.json", tmp_path)
    figs = parse(page).figures
    assert figs["aging-calls"]["attrs"]["data-expected-marks"] == "0"  # nothing traced, nothing drawn
    assert report.ground_truth.hot_resident_fraction is not None  # residency needs no BPF


@pytest.mark.bpf
def test_traced_report_renders_in_chromium(tmp_path):
    report = _check_contract(_experiment(tmp_path / "r.json"))
    assert report.aging.calls is not None and report.aging.series
    page = _check_renderers(tmp_path / "r.json", tmp_path)
    figs = parse(page).figures
    assert [int(m["data-y"]) for m in figs["aging-calls"]["marks"]] == [s.calls for s in report.aging.series]
    exe = chromium()
    run = run_chromium(exe, tmp_path / "r.html", tmp_path / "profile", "--dump-dom")
    dom = parse(run.stdout)
    assert dom.body.get("data-plots-failed") == "0" and dom.body.get("data-errors") == ""
    assert all(f["attrs"]["data-rendered"] in ("1", "empty") for f in dom.figures.values())
    assert [line for line in run.stderr.splitlines() if ":CONSOLE" in line] == []
