"""What a new user meets first: the top-level help, refused flags, and refused runs that leave files alone."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmctl.errors import ExitCode
from kvmctl.probe import probe_host


def kvmctl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmctl", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_top_level_help_describes_the_tool():
    p = kvmctl("--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert "page aging treats KVM guest memory" in text and "'kvmctl COMMAND --help'" in text
    assert "entry point" not in text and "registers" not in text  # not the module's docstring
    for command in ("info", "run", "experiment", "report", "lab"):
        assert f"    {command}" in p.stdout


def test_a_flag_prefix_is_refused_with_the_commands_help():
    p = kvmctl("experiment", "--epochs", "3")
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert p.stderr.strip() == ("kvmctl: error: unrecognized arguments: --epochs 3 "
                                "(see 'kvmctl experiment --help')")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, code, phrase", [
    (["--ager", "memgc"], ExitCode.USAGE, "unknown ager 'memgc'"),
    (["--ager-opt", "squeze=0.5"], ExitCode.USAGE, "has no option 'squeze'"),
    (["--squeeze", "2"], ExitCode.USAGE, "not a fraction"),
    (["--pattern", "moving:2:1"], ExitCode.USAGE, "bad pattern"),
    (["--nested", "--mode", "concurrent"], ExitCode.USAGE, "--nested"),
    (["--backing", "hugetlb"], ExitCode.USAGE, "never reclaims hugetlb pages"),
], ids=["ager-name", "ager-option", "squeeze", "pattern", "nested-mode", "memcg-hugetlb"])
def test_a_refused_experiment_leaves_an_existing_report_alone(tmp_path, args, code, phrase):
    existing = tmp_path / "existing.json"
    existing.write_text('{"the user": "kept this"}\n')
    before = _digest(existing)
    p = kvmctl("experiment", *args, "-o", str(existing), cwd=tmp_path)
    assert p.returncode == code and phrase in p.stderr, p.stderr
    assert _digest(existing) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["existing.json"]


def _unsupported_here() -> list[tuple[list[str], str]]:
    """Refusals that depend on what this host lacks, decided by the capability probe."""
    caps = probe_host(load_bpf=False)
    out = []
    if not caps.memory.mglru:
        out.append((["--ager", "mglru"], "ager mglru is not available"))
    if not caps.memory.page_idle:
        out.append((["--ager", "page_idle"], "ager page_idle is not available"))
    if not caps.memory.swap:
        out.append((["--backing", "anon"], "the memcg ager cannot reclaim anon guest memory here: no swap"))
    if not caps.paging.nested:
        out.append((["--nested", "--mode", "between", "--pattern", "seq"], "--nested needs"))
    return out


def test_a_run_this_host_cannot_support_leaves_an_existing_report_alone(tmp_path):
    cases = _unsupported_here()
    if not cases:
        pytest.skip("this host supports every ager and nested guests: nothing to refuse")
    existing = tmp_path / "existing.json"
    existing.write_text('{"the user": "kept this"}\n')
    before = _digest(existing)
    for args, phrase in cases:
        p = kvmctl("experiment", *args, "-o", str(existing), cwd=tmp_path)
        assert p.returncode == ExitCode.UNSUPPORTED and phrase in p.stderr, p.stderr
        assert "the report goes to" not in p.stderr, "refused only after the output path was decided"
        assert _digest(existing) == before
