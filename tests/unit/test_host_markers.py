"""tests/conftest.py skips by marker with the probe's own reason (run in an inner pytest session)."""

from __future__ import annotations

import os
from pathlib import Path

from kvmctl.probe import probe_host

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

MARKED_TESTS = """
import pytest

@pytest.mark.tdp
def test_tdp(): pass

@pytest.mark.mglru
def test_mglru(): pass

@pytest.mark.root
def test_root(): pass

@pytest.mark.lab
def test_lab(): pass

def test_unmarked(): pass
"""


def test_markers_skip_with_probe_reasons(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    tdp: x\n    mglru: x\n    root: x\n    lab: x\n")
    pytester.makepyfile(test_marked=MARKED_TESTS)
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    outcomes = {r.nodeid.split("::")[-1]: r.outcome for r in result.reprec.getreports("pytest_runtest_logreport")
                if r.when == "setup" or (r.when == "call" and r.passed)}
    caps = probe_host()
    assert outcomes["test_unmarked"] == "passed"
    assert outcomes["test_tdp"] == ("passed" if caps.tdp else "skipped")
    assert outcomes["test_mglru"] == ("passed" if caps.mglru else "skipped")
    assert outcomes["test_root"] == ("passed" if os.geteuid() == 0 else "skipped")
    text = result.stdout.str()
    if not caps.tdp:
        assert f"needs tdp: {caps.tdp.reason}" in text
    if not caps.mglru:
        assert f"needs mglru: {caps.mglru.reason}" in text
    if outcomes["test_lab"] == "skipped":
        assert "needs lab:" in text
