"""Real experiments: `kvmctl experiment` as a user runs it, and the report it writes.

Markers (kvm, bpf, root, slow) make tests/conftest.py skip with the host
probe's reason. Every test checks that no cgroup of ours is left below our
memory cgroup and that no tracefs instance of ours remains.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvmctl import cleanup
from kvmctl.cgroup import kvmctl_children, own_memcg
from kvmctl.errors import KvmctlError
from tests.helpers.experiments import run_cli


def _pid_alive(name: str) -> bool:
    """Names are kvmctl-<pid>-...: a name whose process is gone was left behind."""
    pid = name.split("-")[1]
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _leftovers() -> set[str]:
    from kvmctl.probe.tracing import require_tracefs

    names: set[str] = set()
    try:
        names |= {f"cgroup {n}" for n in kvmctl_children(own_memcg()) if not _pid_alive(n)}
    except KvmctlError:
        pass
    try:
        names |= {f"tracefs instance {p.name}" for p in (require_tracefs() / "instances").iterdir()
                  if p.name.startswith("kvmctl-") and not _pid_alive(p.name)}
    except (OSError, KvmctlError):
        pass
    return names


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Other runs may share our memcg: only names of ended processes are leftovers."""
    before = _leftovers()
    yield
    failures = cleanup.run_all()
    assert failures == [], f"cleanup failed: {failures}"
    assert _leftovers() - before == set(), "left behind"


@pytest.fixture
def experiment(tmp_path) -> Callable[..., dict]:
    return lambda *flags: run_cli(tmp_path, *flags)
