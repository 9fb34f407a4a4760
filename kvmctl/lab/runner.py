"""Boot a lab kernel under QEMU TCG with SVM+NPT (via virtme-ng) and run a command in it.

The host's root is shared read-only; the output dir and a scratch dir are
shared read-write, so reports written inside land on the host. QEMU runs
without acceleration (``--disable-kvm``): the host's own KVM cannot offer the
lab an SVM CPU, and emulation is what lets the lab kernel see ``svm`` + ``npt``.

The command's output and exit status travel through files in the scratch dir,
not through virtme-ng's script ports: those need udev on the host (it names
/dev/virtio-ports/virtme.*), and without it virtme-ng falls back to the serial
console, prints the output only with --verbose and loses the exit status.

Anything else the lab writes lands in its throwaway root, so a kvmctl output
path outside the output dir has its directory shared too (``share_dirs``).
A command that makes no progress is ended by the lab's watchdog
(kvmctl.lab.watchdog) with the stacks it found; should the lab itself stop
answering, the host ends it a little later.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import kvmctl
from kvmctl.errors import GuestError, KvmctlError, UsageError
from kvmctl.lab.inside import FACTS_FILE, READY_MARKER
from kvmctl.lab.kernel import KernelSource, LabKernel
from kvmctl.lab.watchdog import STALL_FILE, end_tree

KVMCTL_ROOT = Path(kvmctl.__file__).resolve().parent.parent
# qemu64 plus the two features the lab exists for; TCG implements both.
LAB_CPU = "max,+svm,+npt"
# One TCG thread for all lab CPUs. With a thread per CPU (QEMU's default), a
# CPU could keep running a stale translation of code another CPU had just
# patched: the kernel's int3-based text patching (a static key flipped when a
# BPF program attaches) then left it re-executing the int3 for ever, with the
# whole lab stuck (rcu_preempt starved, the CPU at asm_exc_int3).
LAB_ACCEL = "tcg,thread=single"
# the command's stdout, stderr and exit status, written by the lab's shell into the scratch dir
OUT_FILE, ERR_FILE, STATUS_FILE = "cmd.out", "cmd.err", "cmd.status"
_TAIL_POLL_S = 0.1
# The host ends a lab whose own watchdog did not report this long after it should have.
_STALL_GRACE_S = 120.0
# Flags through which kvmctl commands name a file they write.
OUTPUT_FLAGS = ("-o", "--output", "--out", "--html")


@dataclass(frozen=True)
class LabSpec:
    kernel: LabKernel
    command: list[str]  # argv to exec inside the lab, already resolved
    cpus: int = 2
    memory: int = 2 << 30
    disk: int = 1 << 30  # zram ext4 scratch disk inside the lab (0: none)
    swap: int = 0  # zram swap inside the lab (0: none, like the development host)
    timeout: float = 900.0
    outdir: Path = field(default_factory=Path.cwd)
    python: str = sys.executable
    verbose: bool = False
    share: tuple[Path, ...] = ()  # more host dirs shared read-write: where the command's outputs go
    stall: float = 300.0  # end the command after this many seconds without output (0: never)


@dataclass
class LabResult:
    returncode: int
    boot_s: float | None  # launch -> the lab's ready marker
    wall_s: float
    facts: dict  # LabFacts as written by kvmctl.lab.inside
    timed_out: bool = False
    stalled: str | None = None  # the watchdog's report when the command made no progress


def resolve_command(command: list[str], python: str) -> list[str]:
    """Map ``kvmctl``/``pytest``/``python`` to this interpreter so the lab runs our code."""
    if not command:
        return [python, "-m", "kvmctl.lab.selfcheck"]
    head, rest = command[0], command[1:]
    if head == "kvmctl":
        return [python, "-m", "kvmctl", *rest]
    if head in ("pytest", "py.test"):
        return [python, "-m", "pytest", *rest]
    if head in ("python", "python3"):
        return [python, *rest]
    return list(command)


def output_paths(command: list[str]) -> list[str]:
    """The files a kvmctl command names with its output flags (``-o F``, ``-oF``, ``--output=F``, ...)."""
    if command[:1] != ["kvmctl"]:
        return []  # another program's -o means something else (pytest -o is an ini option)
    paths = []
    for i, arg in enumerate(command[1:], 1):
        if arg == "--":
            break
        for flag in OUTPUT_FLAGS:
            if arg == flag and i + 1 < len(command):
                paths.append(command[i + 1])
            elif flag.startswith("--") and arg.startswith(flag + "="):
                paths.append(arg[len(flag) + 1:])
            elif not flag.startswith("--") and arg.startswith(flag) and len(arg) > len(flag):
                paths.append(arg[len(flag):])
    return paths


def share_dirs(command: list[str], outdir: Path) -> list[Path]:
    """Host dirs to share read-write so that every output of ``command`` lands on the host.

    The lab's working dir is ``outdir`` (shared): a path under it needs nothing.
    Any other path needs its directory shared, which must exist and must not be /.
    """
    base = outdir.resolve()
    dirs: list[Path] = []
    for value in output_paths(command):
        path = (base / value).resolve()
        if path.is_relative_to(base):
            continue
        parent = path.parent
        if parent == Path("/"):
            raise UsageError(f"the lab cannot write {path}: it would have to share / read-write",
                             f"write it under --outdir ({base}) or another directory")
        if not parent.is_dir():
            raise UsageError(f"the lab cannot write {path}: {parent} does not exist on the host",
                             f"create {parent} first, or write under --outdir ({base})")
        if not any(parent.is_relative_to(d) for d in dirs):
            dirs = [d for d in dirs if not d.is_relative_to(parent)] + [parent]
    return dirs


def inside_argv(spec: LabSpec, scratch: Path) -> list[str]:
    argv = [spec.python, "-m", "kvmctl.lab.inside", "--scratch", str(scratch), "--release", spec.kernel.release,
            "--disk-bytes", str(spec.disk), "--swap-bytes", str(spec.swap), "--stall", f"{spec.stall:g}"]
    if spec.kernel.headers is not None:
        argv += ["--headers", str(spec.kernel.headers)]
    if spec.kernel.headers_common is not None:
        argv += ["--headers-common", str(spec.kernel.headers_common)]
    return [*argv, "--", *spec.command]


def vng_argv(spec: LabSpec, vng: Path, scratch: Path) -> list[str]:
    """virtme-ng's command line for one lab run (pure, so it is unit-tested)."""
    outdir = spec.outdir.resolve()
    if outdir == Path("/"):
        raise UsageError("the lab cannot share / read-write", "run from a project dir or pass --outdir DIR")
    files = {name: shlex.quote(str(scratch / name)) for name in (OUT_FILE, ERR_FILE, STATUS_FILE)}
    # The lab runs the kvmctl that started it, installed or not (the host's root is shared).
    shell = (f"cd {shlex.quote(str(outdir))} && PYTHONPATH={shlex.quote(str(KVMCTL_ROOT))} "
             f"{shlex.join(inside_argv(spec, scratch))} "
             f"</dev/null >{files[OUT_FILE]} 2>{files[ERR_FILE]}; echo $? >{files[STATUS_FILE]}")
    # A build tree is passed as a dir so virtme-ng links its freshly built modules.
    run = spec.kernel.tree if spec.kernel.source is KernelSource.TREE else spec.kernel.image
    argv = [
        str(vng), "--run", str(run),
        "--disable-kvm",
        "--cpus", str(spec.cpus),
        "--memory", f"{spec.memory >> 20}M",
        f"--qemu-opts=-cpu {LAB_CPU} -accel {LAB_ACCEL}",
        f"--rwdir={scratch}",
        f"--rwdir={outdir}",
        *(f"--rwdir={d}" for d in spec.share if not d.is_relative_to(outdir)),
        "--exec", shell,
    ]
    if spec.verbose:
        argv.insert(1, "--verbose")
    return argv


def _pump(src: BinaryIO, dst: BinaryIO) -> None:
    # Forward line by line: QEMU must write into a pipe (not a file it would truncate).
    for line in iter(src.readline, b""):
        dst.write(line)
        dst.flush()


def _tail(path: Path, dst: BinaryIO, done: threading.Event, on_line=None, on_chunk=None) -> None:
    """Forward what the lab appends to ``path`` until ``done``, then the rest."""
    pending = b""
    with ExitStack() as stack:
        f = None
        while True:
            finished = done.is_set()  # read once more after the lab ended: nothing is left behind
            if f is None and path.exists():
                f = stack.enter_context(open(path, "rb"))
            chunk = f.read() if f is not None else b""
            if chunk:
                dst.write(chunk)
                dst.flush()
                if on_chunk is not None:
                    on_chunk()
                if on_line is not None:
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        on_line(line)
            elif finished:
                return
            else:
                time.sleep(_TAIL_POLL_S)


def run_lab(spec: LabSpec, vng: Path, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> LabResult:
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    spec.outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvmctl-lab-") as tmp:
        scratch = Path(tmp)
        argv = vng_argv(spec, vng, scratch)
        ready_at: list[float] = []
        last_output = [time.monotonic()]

        def on_err(line: bytes) -> None:
            if not ready_at and line.startswith(READY_MARKER.encode()):
                ready_at.append(time.monotonic())

        def on_chunk() -> None:
            last_output[0] = time.monotonic()

        # vng starts virtme-run by name: its venv's bin/ must be on PATH.
        env = {**os.environ, "PATH": f"{vng.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=spec.outdir, env=env, start_new_session=True)
        done = threading.Event()
        # virtme-ng's own output (the console with --verbose) is diagnostics: stderr
        threads = [threading.Thread(target=_pump, args=(proc.stdout, stderr), daemon=True),
                   threading.Thread(target=_pump, args=(proc.stderr, stderr), daemon=True),
                   threading.Thread(target=_tail, args=(scratch / OUT_FILE, stdout, done, None, on_chunk),
                                    daemon=True),
                   threading.Thread(target=_tail, args=(scratch / ERR_FILE, stderr, done, on_err, on_chunk),
                                    daemon=True)]
        for t in threads:
            t.start()
        timed_out = unanswered = False
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    now = time.monotonic()
                    if now - started >= spec.timeout:
                        timed_out = True
                    # the command ran and its watchdog should have reported by now: the lab stopped answering
                    elif ready_at and spec.stall and now - last_output[0] >= spec.stall + _STALL_GRACE_S:
                        unanswered = True
                    else:
                        continue
                    end_tree(proc.pid)
                    rc = proc.wait()
                    break
        except BaseException:
            end_tree(proc.pid)  # Ctrl-C or SIGTERM: leave no QEMU behind
            proc.wait()
            raise
        finally:
            done.set()
        for t in threads:
            t.join(timeout=5)
        wall = time.monotonic() - started
        facts_path = scratch / FACTS_FILE
        facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
        status = _read_status(scratch / STATUS_FILE)
        stall_path = scratch / STALL_FILE
        stalled = stall_path.read_text() if stall_path.is_file() else None
    if status is not None:
        rc = status  # the command's own exit status; vng's is virtme-ng's
    boot = ready_at[0] - started if ready_at else None
    result = LabResult(rc, boot, wall, facts, timed_out, stalled)
    if stalled is not None:
        raise LabStalled(result, spec.stall, "its processes' stacks are printed above")
    if unanswered:
        raise LabStalled(result, spec.stall, f"the lab did not answer for another {_STALL_GRACE_S:.0f} s either, "
                                             "so no stacks could be read")
    if timed_out:
        raise LabTimeout(result, spec.timeout)
    if not facts:
        raise GuestError(f"the lab kernel {spec.kernel.release} did not reach the command (vng exit {rc})",
                         "re-run with --verbose to see its console")
    return result


def _read_status(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # never written: the lab died or was stopped first
        return None


class LabTimeout(KvmctlError):
    def __init__(self, result: LabResult, timeout: float):
        super().__init__(f"the lab command did not finish within {timeout:.0f} s and was stopped",
                         "raise --timeout; code runs ~17x slower under emulation")
        self.result = result


class LabStalled(KvmctlError):
    def __init__(self, result: LabResult, stall: float, what: str):
        super().__init__(f"the lab command made no progress (no new output) for {stall:.0f} s and was stopped: {what}",
                         "re-run with --verbose for the lab's console; raise --stall (0: never) if it is only slow")
        self.result = result
