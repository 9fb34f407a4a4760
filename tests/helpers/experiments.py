"""Helpers of the experiment tests: run the CLI, walk and check a report dict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kvmctl.report.figures import REQUIRED_FIGURES

RUN_TIMEOUT_S = 600


def run_cli(tmp: Path, *flags: str, name: str = "report.json") -> dict:
    """Run `kvmctl experiment FLAGS` in a child process; return the report it wrote."""
    out = tmp / name
    proc = subprocess.run([sys.executable, "-m", "kvmctl", "experiment", *flags, "--quiet", "-o", str(out)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.strip()}"
    report = json.loads(out.read_text())
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    return report


def run_cli_text(tmp: Path, *flags: str, expect_exit: int = 0) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `kvmctl experiment FLAGS` as a user does (the text summary on stdout); its process and report."""
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, "-m", "kvmctl", "experiment", *flags, "-o", str(out)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == expect_exit, f"exit {proc.returncode}: {proc.stderr.strip()}"
    return proc, json.loads(out.read_text())


def dig(report: dict, dotted: str):
    """report['a']['b'] for 'a.b'; KeyError names the missing part."""
    obj = report
    for part in dotted.split("."):
        if part not in obj:
            raise KeyError(f"{dotted}: no {part!r}")
        obj = obj[part]
    return obj


def assert_nulls_explained(report: dict) -> None:
    """Every required figure exists; a null one has a reason in probes.not_observable."""
    reasons = report["probes"]["not_observable"]
    for key in REQUIRED_FIGURES + ("schema_version", "complete", "probes.chosen", "probes.not_observable",
                                      "memslots"):
        value = dig(report, key)
        if value is None:
            why = reasons.get(key) or reasons.get(key.split(".")[0])
            assert why and why.strip(), f"{key} is null without a reason"


def assert_memslots_consistent(report: dict, mem_bytes: int, count: int) -> None:
    slots = report["memslots"]
    assert len(slots) == count
    assert sum(m["size"] for m in slots) == mem_bytes
    for m in slots:
        assert m["hva_end"] - m["hva_start"] == m["gpa_end"] - m["gpa_start"] == m["size"]
        assert m["hva_start"] % 4096 == 0 and m["gpa_start"] % 4096 == 0
    for a, b in zip(slots, slots[1:]):  # laid out in order, never overlapping
        assert a["gpa_end"] <= b["gpa_start"]
        assert a["hva_end"] <= b["hva_start"] or b["hva_end"] <= a["hva_start"]


def by_class(report: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in report["aging"]["by_task"]:
        out[row["class"]] = out.get(row["class"], 0) + row["calls"]
    return out
