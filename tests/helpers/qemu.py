"""A real QEMU for the watch tests: `-accel kvm`, file-backed RAM, in a memory cgroup of the test's own.

No guest OS is needed: QEMU creates the VM and maps its RAM (prealloc
touches every page, so it is resident and charged to the cgroup), and the
firmware runs on the vCPU. File-backed RAM is page cache, which reclaim can
take back on this host without swap. The process is ended by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kvmctl.cgroup import ExperimentCgroup, Memcg

MIB = 1 << 20


def qemu_binary() -> str:
    found = shutil.which("qemu-system-x86_64")
    if not found:
        pytest.skip("needs qemu-system-x86_64 (scripts/setup.sh installs qemu-system-x86)")
    return found


class Qemu:
    """``close()`` it: ends QEMU by its PID, removes its cgroup and files."""

    def __init__(self, own: Memcg, tag: str, size: int = 512 * MIB, aslr: bool = True):
        self.size = size
        self.dir = Path(tempfile.mkdtemp(prefix="kvmctl-qemu-", dir="/var/tmp"))  # a disk: page cache reclaims
        self.ram = self.dir / "ram.img"
        self.qmp = str(self.dir / "qmp.sock")
        self.cg = ExperimentCgroup.create(tag, parent=own)
        argv = [qemu_binary(), "-machine", "q35,accel=kvm,memory-backend=ram", "-m", f"{size >> 20}M",
                "-object", f"memory-backend-file,id=ram,size={size >> 20}M,mem-path={self.ram},share=on,prealloc=on",
                "-nodefaults", "-display", "none", "-serial", "none", "-monitor", "none",
                "-qmp", f"unix:{self.qmp},server=on,wait=off"]
        if not aslr:  # same binary, same arguments, no ASLR: the same addresses as another such QEMU
            argv = ["setarch", "x86_64", "-R", *argv]
        procs = self.cg.path / "cgroup.procs"
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=lambda: procs.write_text(str(os.getpid())))
        self.pid = self.proc.pid
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                self.close()
                pytest.fail(f"QEMU exited with {self.proc.returncode}: {err.strip()[-400:]}")
            fds = [os.readlink(p) for p in Path(f"/proc/{self.pid}/fd").iterdir() if p.exists()]
            if "anon_inode:kvm-vm" in fds and os.path.exists(self.qmp) and self.cg.usage_bytes() >= self.size:
                return
            time.sleep(0.1)
        self.close()
        pytest.fail(f"QEMU did not map its {self.size >> 20} MiB within {timeout:.0f} s")

    def exit(self) -> None:
        """End QEMU now (SIGTERM, then SIGKILL), by its PID."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)

    def close(self) -> None:
        self.exit()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.cg.remove()
        shutil.rmtree(self.dir, ignore_errors=True)
