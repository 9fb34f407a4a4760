"""The lab's no-progress watchdog: a command whose output stops growing is ended with its stacks.

Inside the lab the command's stdout and stderr are files in the shared
scratch dir, so new output is progress; so is a second in which the
command's own process was busy (a BCC compile prints nothing for minutes
under emulation), while a command waiting on a child that makes no
progress is not. When neither happens for the stall time, the watchdog
writes what every process of the command is doing
to stderr: each thread's state, wchan, the syscall it sits in and its kernel
stack (``/proc/PID/task/TID/...``), the Python stacks of kvmctl's own
processes (they dump them on ``kvmctl.vocab.STACK_SIGNAL``)
and, inside the lab only, the kernel's list of blocked tasks (sysrq ``w``).
Then it ends the command and leaves ``STALL_FILE`` for the host to find.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from kvmctl.vocab import STACK_SIGNAL

STALL_FILE = "stall.txt"
STALL_EXIT = 124  # like timeout(1)
_POLL_S = 1.0
_BUSY_SHARE = 0.25  # a poll interval in which the command's process ran this share of it is progress
_KILL_GRACE_S = 3.0
_KERNEL_LOG_LINES = 300

# x86-64 numbers of the syscalls a stuck kvmctl thread is likely to sit in
_SYSCALLS = {0: "read", 1: "write", 7: "poll", 16: "ioctl", 23: "select", 35: "nanosleep", 61: "wait4",
             202: "futex", 230: "clock_nanosleep", 232: "epoll_wait", 271: "ppoll", 281: "epoll_pwait"}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError as err:
        return f"<unreadable: {err.strerror}>"


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (else the signal would kill it)."""
    for line in _read(Path(f"/proc/{pid}/status")).splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _syscall(text: str) -> str:
    word = text.split()[0] if text else "?"
    if word.lstrip("-").isdigit():
        number = int(word)
        return "none (running)" if number == -1 else f"{_SYSCALLS.get(number, 'syscall')} ({number})"
    return word  # "running" or an unreadable note


def thread_report(pid: int) -> list[str]:
    """Every thread of ``pid``: state, wchan, syscall and kernel stack, from /proc."""
    lines = []
    tasks = Path(f"/proc/{pid}/task")
    try:
        tids = sorted(int(t.name) for t in tasks.iterdir())
    except OSError as err:
        return [f"  (threads unreadable: {err.strerror})"]
    for tid in tids:
        task = tasks / str(tid)
        stat = _read(task / "stat")
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        lines.append(f"  thread {tid} {_read(task / 'comm')}: state {state}, wchan {_read(task / 'wchan') or '-'}, "
                     f"syscall {_syscall(_read(task / 'syscall'))}")
        lines += [f"    {frame}" for frame in _read(task / "stack").splitlines()]
    return lines


def _kernel_blocked_tasks() -> list[str]:
    """The kernel's list of blocked (D state) tasks: sysrq w, read back from /dev/kmsg. Lab only."""
    try:
        Path("/proc/sysrq-trigger").write_text("w")
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        return [f"  (sysrq w unavailable: {err.strerror})"]
    records = []
    try:
        while True:
            try:
                records.append(os.read(fd, 8192).decode(errors="replace"))
            except OSError as err:
                if err.errno == errno.EPIPE:  # overwritten records: go on with the next
                    continue
                break  # EAGAIN: the end of the log
    finally:
        os.close(fd)
    text = [r.split(";", 1)[-1].split("\n")[0] for r in records]  # the message, not its KEY=VALUE lines
    start = max((i for i, line in enumerate(text) if "Show Blocked State" in line), default=0)
    return ["  " + line for line in text[start:][:_KERNEL_LOG_LINES]]


def stall_report(root_pid: int, stalled_s: float, kernel_log: bool) -> str:
    """What the command's processes are doing; asks kvmctl's own processes for their Python stacks first."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for proc in procs:
        if _catches(proc.pid, STACK_SIGNAL):
            try:
                os.kill(proc.pid, STACK_SIGNAL)  # it writes its Python stacks to its stderr, which we share
            except ProcessLookupError:
                continue
            time.sleep(0.5)  # one at a time: dumps written at once interleave
    lines = [f"kvmctl-lab: no progress for {stalled_s:.0f} s (no new output, and the command's process was not "
             "busy); what the command's processes are doing (their Python stacks, where they have a handler, are "
             "above):"]
    for proc in procs:
        try:
            cmdline = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            cmdline = "?"
        lines.append(f"process {proc.pid}: {cmdline}")
        lines += thread_report(proc.pid)
    if kernel_log:
        lines.append("blocked tasks (sysrq w):")
        lines += _kernel_blocked_tasks()
    return "\n".join(lines) + "\n"


def end_tree(root_pid: int) -> None:
    """End a process and everything it started, by PID: SIGTERM, then SIGKILL after a grace period."""
    try:
        root = psutil.Process(root_pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=_KILL_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _output_size(fds: tuple[int, ...]) -> int:
    total = 0
    for fd in fds:
        try:
            total += os.fstat(fd).st_size
        except OSError:
            pass
    return total


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def run_watched(command: list[str], env: dict[str, str], stall_s: float, scratch: Path, *,
                kernel_log: bool = False, fds: tuple[int, ...] = (1, 2)) -> int:
    """Run ``command`` (its output on ``fds``); its exit status, or STALL_EXIT once it made no progress.

    ``stall_s`` 0 waits for ever.
    """
    proc = subprocess.Popen(command, env=env)
    root = psutil.Process(proc.pid)
    size, cpu, since = _output_size(fds), _cpu_s(root), time.monotonic()
    while True:
        t0 = time.monotonic()
        try:
            return proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        now_size, now_cpu = _output_size(fds), _cpu_s(root)
        busy = now_cpu - cpu >= _BUSY_SHARE * (time.monotonic() - t0)
        cpu = now_cpu
        if now_size != size or busy:
            size, since = now_size, time.monotonic()
        elif stall_s and time.monotonic() - since >= stall_s:
            report = stall_report(proc.pid, time.monotonic() - since, kernel_log)
            sys.stderr.write(report)
            sys.stderr.flush()
            (scratch / STALL_FILE).write_text(report)
            end_tree(proc.pid)
            proc.wait()
            return STALL_EXIT
