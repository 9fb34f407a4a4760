"""Host-state snapshots and kvmctl subprocess runs for the reliability tests.

The development host is shared: other people's tests create their own
kvmctl-<pid>-* cgroups, tracefs instances and BPF programs at the same time.
So every check here is scoped to the kvmctl process a test started (its pid
is in the names it creates, its BPF program ids are read from its fds while
it runs) and to a private TMPDIR/KVMCTL_TMPDIR the test hands it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvmctl.cgroup import Memcg, kvmctl_children, own_memcg
from kvmctl.probe.memory import DAMON_ADMIN
from kvmctl.probe.tracing import tracefs_dir

# Knobs of our own memcg that kvmctl must never change (v1 and v2 names; absent ones are skipped).
OWN_MEMCG_KNOBS = ("memory.limit_in_bytes", "memory.soft_limit_in_bytes", "memory.memsw.limit_in_bytes",
                   "memory.swappiness", "memory.use_hierarchy", "memory.oom_control", "memory.max", "memory.high",
                   "memory.low", "memory.min")
# Host-wide knobs an ager could touch; kvmctl must leave them as it found them.
HOST_KNOBS = ("/sys/kernel/mm/lru_gen/enabled", "/sys/kernel/mm/lru_gen/min_ttl_ms",
              "/sys/kernel/mm/transparent_hugepage/enabled", "/proc/sys/vm/swappiness",
              "/proc/sys/vm/nr_hugepages")
ERROR_RE = re.compile(r"^kvmctl: error: .+ \(.+\)$")
VMPROC = "kvmctl.experiment.vmchild"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def tracefs() -> Path | None:
    return tracefs_dir()


def damon_state() -> dict[str, str]:
    """Read-only view of every kdamond: state, pid, and per context the targets and schemes counts."""
    out: dict[str, str] = {}
    kd = DAMON_ADMIN / "kdamonds"
    if not kd.is_dir():
        return out
    out["nr_kdamonds"] = (_read(kd / "nr_kdamonds") or "").strip()
    for d in sorted(p for p in kd.iterdir() if p.name.isdigit()):
        for name in ("state", "pid"):
            out[f"{d.name}/{name}"] = (_read(d / name) or "").strip()
        ctxs = d / "contexts"
        out[f"{d.name}/contexts/nr_contexts"] = (_read(ctxs / "nr_contexts") or "").strip()
        for c in sorted(p for p in ctxs.glob("[0-9]*")):
            for name in ("operations", "targets/nr_targets", "schemes/nr_schemes"):
                out[f"{d.name}/contexts/{c.name}/{name}"] = (_read(c / name) or "").strip()
    return out


@dataclass(frozen=True)
class HostState:
    """What kvmctl must leave exactly as it found it."""

    own_memcg: dict[str, str]
    host_knobs: dict[str, str]
    damon: dict[str, str]

    @classmethod
    def capture(cls) -> HostState:
        memcg = own_memcg()
        own = {k: v for k in OWN_MEMCG_KNOBS if (v := _read(memcg.path / k)) is not None}
        knobs = {k: v for k in HOST_KNOBS if (v := _read(Path(k))) is not None}
        return cls(own, knobs, damon_state())


def kvmctl_cgroups(pid: int, parent: Memcg | None = None) -> list[str]:
    """cgroups below our memcg that kvmctl process ``pid`` created (named kvmctl-<pid>-*)."""
    return [n for n in kvmctl_children(parent or own_memcg()) if n.startswith(f"kvmctl-{pid}-")]


def tracefs_instances(pid: int) -> list[str]:
    root = tracefs()
    if root is None or not (root / "instances").is_dir():
        return []
    return [p.name for p in (root / "instances").iterdir() if p.name.startswith(f"kvmctl-{pid}-")]


def vm_processes(pid: int) -> list[int]:
    """Live VM children started by kvmctl process ``pid`` (their argv names the parent)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if VMPROC in args and args[-1] == str(pid):
            out.append(int(proc.name))
    return out


def bpf_prog_ids_of(pid: int) -> set[int]:
    """BPF program ids held by the fds of ``pid`` (fdinfo of bpf-prog fds shows prog_id)."""
    ids: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return ids
    for fd in fds:
        text = _read(fd) or ""
        for m in re.finditer(r"^prog_id:\s+(\d+)", text, re.M):
            ids.add(int(m.group(1)))
    return ids


def loaded_prog_ids() -> set[int]:
    """Every BPF program the kernel holds (bpftool prog show)."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not Path(bpftool).exists():
        raise RuntimeError("bpftool is missing: apt-get install bpftool (scripts/setup.sh installs it)")
    run = subprocess.run([bpftool, "-j", "prog", "show"], capture_output=True, text=True, timeout=30)
    if run.returncode != 0:
        raise RuntimeError(f"bpftool prog show failed: {run.stderr.strip()}")
    return {p["id"] for p in json.loads(run.stdout or "[]")}


def private_env(tmp: Path, **extra: str) -> dict[str, str]:
    """kvmctl's environment with its temporary files in ``tmp`` (TMPDIR and KVMCTL_TMPDIR)."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), KVMCTL_TMPDIR=str(tmp))
    env.pop("SUDO_UID", None)
    env.pop("SUDO_GID", None)
    env.update(extra)
    return env


def kvmctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmctl", *args]


@dataclass
class Outcome:
    pid: int
    returncode: int
    stdout: str
    stderr: str
    bpf_ids: set[int] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr_lines if line.startswith("kvmctl: ")]


def run_kvmctl(args: list[str], tmp: Path, *, prefix: list[str] | None = None, env: dict[str, str] | None = None,
               timeout: float = 120, cwd: Path | None = None, command: list[str] | None = None) -> Outcome:
    """Run ``python -m kvmctl ARGS`` (or ``command + ARGS``) to the end with a private temp dir."""
    t0 = time.monotonic()
    proc = subprocess.Popen((prefix or []) + (command or kvmctl_cmd()) + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True, env=env or private_env(tmp / "tmp"), cwd=cwd or tmp)
    out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.pid, proc.returncode, out, err, seconds=time.monotonic() - t0)


def run_until_line(command: list[str], tmp: Path, marker: str, act: Callable[[subprocess.Popen], set[int] | None],
                   *, timeout: float = 60, why: str = "") -> Outcome:
    """Run ``command`` with a private temp dir; once its stderr shows ``marker``, ``act(proc)``; then its outcome.

    ``act`` may return the BPF program ids the run held (for assert_nothing_left). A run that has not ended
    ``timeout`` seconds after ``act`` is killed.
    """
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=private_env(tmp / "tmp"), cwd=tmp)
    try:
        seen = wait_for_line(proc.stderr, marker, time.monotonic() + 90)
        assert seen and marker in seen[-1], f"{why}{''.join(seen)}"
        bpf_ids = act(proc) or set()
        rest = proc.stderr.read()
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, by its Popen handle
            proc.wait()
    return Outcome(proc.pid, code, "", "".join(seen) + rest, bpf_ids)


def assert_one_line_error(o: Outcome, code: int, *phrases: str) -> str:
    """Exit ``code``, exactly one stderr line "kvmctl: error: ... (hint)" naming ``phrases``, no traceback."""
    assert "Traceback" not in o.stderr, o.stderr
    assert o.returncode == code, f"exit {o.returncode}, wanted {code}: {o.stderr}"
    errors = [line for line in o.stderr_lines if line.startswith("kvmctl: error:")]
    assert len(errors) == 1, o.stderr
    # Progress lines ("[  0.0s] ...") may precede the error; nothing else may.
    others = [line for line in o.stderr_lines if line not in errors and not line.startswith("[")]
    assert not others, o.stderr
    line = errors[0]
    assert ERROR_RE.match(line), f"no parenthesised hint: {line}"
    for phrase in phrases:
        assert phrase.lower() in line.lower(), f"{phrase!r} not in {line!r}"
    return line


def assert_nothing_left(o: Outcome, tmp: Path, before: HostState | None = None,
                        bpf_before_exit: set[int] | None = None) -> None:
    """No cgroup, tracefs instance, VM process, temp file or BPF program of this kvmctl run remains."""
    assert kvmctl_cgroups(o.pid) == [], f"cgroups left: {kvmctl_cgroups(o.pid)}"
    assert tracefs_instances(o.pid) == []
    assert vm_processes(o.pid) == [], f"VM processes left: {vm_processes(o.pid)}"
    leftovers = sorted(p.name for p in (tmp / "tmp").iterdir()) if (tmp / "tmp").is_dir() else []
    assert leftovers == [], f"temporary files left: {leftovers}"
    held = (bpf_before_exit or set()) | o.bpf_ids
    if held:
        # The kernel frees a closed program after an RCU grace period: give it a moment.
        deadline = time.monotonic() + 5
        while (left := held & loaded_prog_ids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"BPF programs still loaded: {sorted(left)}"
    if before is not None:
        after = HostState.capture()
        assert after.own_memcg == before.own_memcg, "our own memcg's knobs changed"
        assert after.host_knobs == before.host_knobs, "a host knob changed"
        assert after.damon == before.damon, "DAMON state changed"


def wait_for_line(stream, needle: str, deadline: float) -> list[str]:
    """Read lines from a text pipe until one contains ``needle`` (or the deadline/EOF)."""
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            break
    return seen


def send(proc: subprocess.Popen, signum: signal.Signals) -> None:
    """Signal our own child, by its Popen handle."""
    if proc.poll() is None:
        proc.send_signal(signum)
