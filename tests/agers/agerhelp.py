"""Parent side of a VM child process (vm_child.py) for the ager host tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvmctl.cgroup import ExperimentCgroup, Memcg

SIZE = 256 << 20
HOT = 0.25
CHILD = Path(__file__).with_name("vm_child.py")


class VmChild:
    def __init__(self, own: Memcg):
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(SIZE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.cg = ExperimentCgroup.create("vm", parent=own)
        self.cg.add_pid(self.proc.pid)
        reply = self.cmd("go")
        if not reply:
            pytest.fail(f"VM child failed: {self.proc.stderr.read()}")
        self.hva, fd, self.gpa = map(int, reply.split())
        self.backing = f"/proc/{self.proc.pid}/fd/{fd}"

    def cmd(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.cmd("quit")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.cg.remove()


def prepared_vm(own: Memcg) -> VmChild:
    child = VmChild(own)
    try:
        assert child.cmd("epoch seq w").startswith("done")
        assert child.cmd("sync") == "synced"  # clean pages: reclaim can drop them without writeback
        for _ in range(3):
            assert child.cmd(f"epoch hotcold:{HOT} r").startswith("done")
    except BaseException:
        child.close()
        raise
    return child
