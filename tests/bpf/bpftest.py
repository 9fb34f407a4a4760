"""Helpers of the real-probe tests: a GuestMachine in a child process, in its own memory cgroup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kvmctl.cgroup import ExperimentCgroup, Memcg
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
