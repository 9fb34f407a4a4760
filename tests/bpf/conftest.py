"""Real-probe tests: a VM in a child process, our tracer, and independent counts.

Markers (bpf, kvm, root) make tests/conftest.py skip with the host probe's
reason. Every test leaves no cgroup, no tracefs instance and no BPF program
behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kvmctl import cleanup
from kvmctl.cgroup import ExperimentCgroup, Memcg, kvmctl_children, own_memcg
from kvmctl.errors import KvmctlError
from kvmctl.trace.catalogue import make_plan, probe_kernel
from kvmctl.trace.records import MemslotRange, TraceTarget

CHILD = Path(__file__).with_name("vm_child.py")


class VmChild:
    """GuestMachine in a child process inside its own experiment cgroup."""

    def __init__(self, own: Memcg, size: int, backing: str = "file", tag: str = "bpf"):
        self.size = size
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(size), backing], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.cg = ExperimentCgroup.create(tag, parent=own)
        try:
            self.cg.add_pid(self.proc.pid)
            reply = self.cmd("go")
            if not reply:
                raise RuntimeError(f"VM child failed: {self.proc.stderr.read()}")
            self.memslots = []
            for item in reply.split():
                slot, hva, sz, gpa = map(int, item.split(":"))
                self.memslots.append(MemslotRange(slot, hva, sz, gpa))
        except BaseException:
            self.close()
            raise

    def cmd(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def target(self, ager_tids: set[int] | None = None) -> TraceTarget:
        return TraceTarget(self.proc.pid, list(self.memslots), set(ager_tids or ()))

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (kv.split("=") for kv in self.cmd("stats").split())}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()  # our own child, by its Popen handle
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()
        self.cg.remove()


@pytest.fixture(scope="session")
def own() -> Memcg:
    try:
        memcg = own_memcg()
    except KvmctlError as err:
        pytest.skip(f"no usable memory cgroup: {err.one_line()}")
    if not os.access(memcg.path, os.W_OK):
        pytest.skip(f"cannot create cgroups below {memcg.path}")
    return memcg


@pytest.fixture(scope="session")
def offer():
    return probe_kernel()


@pytest.fixture(scope="session")
def plan(offer):
    return make_plan(offer)


@pytest.fixture
def ager_tid() -> int:
    return threading.get_native_id()


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    failures = cleanup.run_all()
    assert failures == [], f"cleanup failed: {failures}"
    try:
        memcg = own_memcg()
    except KvmctlError:
        return
    mine = [n for n in kvmctl_children(memcg) if n.startswith(f"kvmctl-{os.getpid()}-")]
    assert mine == [], f"cgroups left below {memcg.rel}: {mine}"
