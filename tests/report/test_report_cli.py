"""`kvmctl report ...` end to end: exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from kvmctl.errors import ExitCode
from kvmctl.report.schema import SCHEMA_VERSION
from kvmctl.report.files import write_report
from kvmctl.report.textual import render_text
from tests.helpers.reports import make_report, with_repeats


def kvmctl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmctl", "report", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.fixture
def report_file(tmp_path):
    return write_report(make_report(), tmp_path / "report.json")


def _one_line_error(run: subprocess.CompletedProcess, code: ExitCode, phrase: str) -> None:
    assert run.returncode == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmctl: error:"), run.stderr
    assert phrase in lines[0]
    assert "Traceback" not in run.stderr


def test_show(report_file):
    run = kvmctl("show", str(report_file))
    assert run.returncode == 0, run.stderr
    assert run.stdout == render_text(make_report())


def test_show_json_passes_data_through(report_file):
    run = kvmctl("show", "--json", str(report_file))
    assert run.returncode == 0
    assert json.loads(run.stdout) == json.loads(report_file.read_text())


@pytest.mark.parametrize(
    "content, phrase",
    [
        ('{"kind": "kvmctl-report", "schema_version": 1, "aging": {"cal', "truncated"),
        ("not json at all", "is not JSON"),
        ('{"hello": 1}', "is not a kvmctl report"),
        (json.dumps({"kind": "kvmctl-report", "schema_version": SCHEMA_VERSION + 7}), "upgrade kvmctl"),
    ],
)
def test_bad_report_files(tmp_path, content, phrase):
    path = tmp_path / "bad.json"
    path.write_text(content)
    for action in (["show"], ["html"], ["trace"]):
        _one_line_error(kvmctl(*action, str(path)), ExitCode.USAGE, phrase)


def test_missing_report(tmp_path):
    _one_line_error(kvmctl("show", str(tmp_path / "none.json")), ExitCode.USAGE, "does not exist")


def test_html_and_trace_outputs(report_file, tmp_path):
    run = kvmctl("html", str(report_file), "-o", str(tmp_path / "out.html"))
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE((tmp_path / "out.html").stat().st_mode) == 0o644
    assert "<svg" in (tmp_path / "out.html").read_text()
    run = kvmctl("trace", str(report_file))  # default output next to the report
    assert run.returncode == 0, run.stderr
    trace = json.loads((tmp_path / "report.trace.json").read_text())
    assert trace["traceEvents"]


def test_outputs_refuse_symlinks(report_file, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out.html").symlink_to(victim)
    _one_line_error(kvmctl("html", str(report_file), "-o", str(tmp_path / "out.html")), ExitCode.USAGE, "symbolic link")
    (tmp_path / "t.json").symlink_to(victim)
    _one_line_error(kvmctl("trace", str(report_file), "-o", str(tmp_path / "t.json")), ExitCode.USAGE, "symbolic link")
    assert victim.read_text() == "precious"


def test_diff(tmp_path, report_file):
    other = write_report(with_repeats(make_report(seed=5, scale=1.2), 3, seed=9), tmp_path / "b.json")
    run = kvmctl("diff", str(report_file), str(other))
    assert run.returncode == 0, run.stderr
    assert "-- B vs A" in run.stdout and "aging calls" in run.stdout
    run = kvmctl("diff", "--json", str(report_file), str(other))
    assert json.loads(run.stdout)["comparisons"][0]["report"] == str(other)
    _one_line_error(kvmctl("diff", str(report_file)), ExitCode.USAGE, "at least two reports")


def test_no_action():
    run = kvmctl()
    assert run.returncode == ExitCode.USAGE and "Traceback" not in run.stderr
