"""The experiment's VM runs in a child process, driven over a pipe.

Why a child: its guest memory is charged to the experiment's memory cgroup
and not to the controller (BCC and LLVM live there), and a wedged guest can
be killed without losing the trace. The protocol is one JSON object per line:
the parent sends a command, the child answers with ``{"ok": ...}`` or
``{"error": {...}}``. The child joins the cgroup before it maps guest memory.

Commands: build, epoch, loop_start/loop_stop (epochs back to back while the
parent runs an ager pass), stats, sync_memory, finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path

from kvmctl.errors import ExitCode, GuestError, KvmctlError, UsageError
from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.kvm import BackingKind
from kvmctl.units import HUGE_2M, PAGE_SIZE


# --- child side -----------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Never outlive the controller, even one killed with SIGKILL.

    EOF on stdin ends the command loop, but not a guest busy in an epoch;
    PR_SET_PDEATHSIG kills us when the parent's thread that started us dies.
    A parent already gone before the prctl is caught by the ppid check.
    """
    from kvmctl import libc

    libc.prctl(libc.PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)


def _child_main(parent_pid: int | None = None) -> int:
    # The parent handles Ctrl-C and tells us to stop; a terminal's SIGINT
    # to the whole process group must not kill the VM mid-report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the protocol pipe
    machine: GuestMachine | None = None
    loop: _EpochLoop | None = None

    def reply(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "build":
                if msg.get("cgroup_procs"):
                    Path(msg["cgroup_procs"]).write_text(str(os.getpid()))
                if msg.get("nice"):
                    # before any vCPU thread exists: threads inherit their creator's nice value
                    os.setpriority(os.PRIO_PROCESS, 0, int(msg["nice"]))
                if msg.get("cpus"):  # likewise inherited: every vCPU thread runs on these CPUs
                    os.sched_setaffinity(0, msg["cpus"])
                spec = MachineSpec(**{**msg["spec"], "backing": BackingKind(msg["spec"]["backing"])})
                spec, misbehave = _test_payload(spec)
                machine = GuestMachine(spec, epoch_timeout=msg.get("epoch_timeout"))
                misbehave(machine)
                machine.start()
                reply({"ok": {
                    "pid": os.getpid(),
                    "vcpu_tids": machine.vcpu_thread_ids,
                    "tsc_hz": machine.tsc_hz,
                    "total_pages": machine.total_pages,
                    "memslots": [asdict(m) for m in machine.data_memslots],
                    "backing_fds": [b.fd for b in machine.backings],
                    "regions": [asdict(r) for r in machine.regions],
                }})
            elif cmd == "epoch":
                reply({"ok": _epoch_dict(machine.run_epoch(Pattern.parse(msg["pattern"]), msg["write"],
                                                           msg.get("seed", 0)))})
            elif cmd == "loop_start":
                loop = _EpochLoop(machine, Pattern.parse(msg["pattern"]), msg["write"], msg.get("seed", 0))
                loop.start()
                try:
                    loop.wait_epochs(msg.get("min_epochs", 0))
                except BaseException:
                    loop = None  # it ended: nothing left to stop
                    raise
                reply({"ok": True})
            elif cmd == "loop_stop":
                reply({"ok": loop.stop()})
                loop = None
            elif cmd == "stats":
                reply({"ok": machine.vm_stats()})
            elif cmd == "host_touch":
                # map every data page in this process (no guest access): what the nested
                # experiment ages before any nested guest ran
                for b in machine.backings:
                    b.view()[::PAGE_SIZE] = 1
                reply({"ok": True})
            elif cmd == "sync_memory":
                for b in machine.backings:
                    if b.fd >= 0:
                        os.fsync(b.fd)
                reply({"ok": True})
            elif cmd == "finish":
                if machine:
                    machine.finish()
                    machine.close()
                reply({"ok": True})
                return 0
        except KvmctlError as err:
            reply({"error": _error_dict(err)})
            if isinstance(err, GuestError):
                break
        except Exception as err:  # noqa: BLE001 - reported to the parent as one line
            reply({"error": {"type": type(err).__name__, "message": f"VM process: {type(err).__name__}: {err}",
                              "hint": "a kvmctl bug; please report it with the command line"}})
    if loop:
        loop.stop()
    if machine:
        machine.close()
    return 0


# Test hook, documented in docs/reliability.md: KVMCTL_TEST_PAYLOAD=faults:<mode> makes the
# experiment's VM run the `faults` payload, so tests reach the guest-fault paths end to end.
_FAULT_MODES = {"ud": 0, "mmio": 1, "pf": 2, "spin": 3, "triple": 0}
_UNMAPPED_GVA = 0x2_0000_0000  # 8 GiB: no page-table entry maps it


def _test_payload(spec: MachineSpec):
    """``spec`` as KVMCTL_TEST_PAYLOAD wants it, and what to do to the built machine before it starts."""
    text = os.environ.get("KVMCTL_TEST_PAYLOAD")
    if not text:
        return spec, lambda machine: None
    payload, _, mode = text.partition(":")
    if payload != "faults" or mode not in _FAULT_MODES:
        raise UsageError(f"KVMCTL_TEST_PAYLOAD={text!r} is not faults:<mode>",
                         f"unset it, or use one of faults:{', faults:'.join(_FAULT_MODES)}")
    spec = replace(spec, payload="faults", mmio_hole=HUGE_2M if mode == "mmio" else 0)

    def misbehave(machine: GuestMachine) -> None:
        arg1 = {"mmio": machine.mmio_gpa + 0x1238, "pf": _UNMAPPED_GVA}.get(mode, 0)
        for mb in machine.mailboxes:
            mb.arg0, mb.arg1 = _FAULT_MODES[mode], arg1
        if mode == "triple":  # no usable IDT: #UD -> #GP -> #DF -> shutdown
            for vcpu in machine.vm.vcpus:
                sregs = vcpu.get_sregs()
                sregs.idt.limit = 0
                vcpu.set_sregs(sregs)

    return spec, misbehave


class _EpochLoop(threading.Thread):
    """Runs epochs back to back until stopped and sums them up.

    Epoch numbers are consecutive, so (first, last) is enough for the parent
    to recompute the ground truth of every epoch of the loop.
    """

    def __init__(self, machine: GuestMachine, pattern: Pattern, write: bool, seed: int):
        super().__init__(name="kvmctl-epoch-loop", daemon=True)
        self.machine, self.pattern, self.write, self.seed = machine, pattern, write, seed
        self.first = machine.next_epoch
        self.summary = {"pattern": str(pattern), "write": write, "seed": seed, "first": self.first, "last": None,
                        "epochs": 0, "touches": 0, "guest_seconds": 0.0, "start_ns": None, "end_ns": None}
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._progress = threading.Condition()
        self._ended = False

    def run(self) -> None:
        s = self.summary
        try:
            while not self._halt.is_set():
                r = self.machine.run_epoch(self.pattern, self.write, self.seed)
                with self._progress:
                    s["start_ns"] = s["start_ns"] or r.start_ns
                    s["end_ns"], s["last"] = r.end_ns, r.epoch
                    s["epochs"] += 1
                    s["touches"] += r.touches
                    s["guest_seconds"] += r.guest_seconds
                    self._progress.notify_all()
        except BaseException as err:  # noqa: BLE001 - re-raised by stop()
            self.error = err
        finally:
            with self._progress:
                self._ended = True
                self._progress.notify_all()

    def wait_epochs(self, n: int) -> None:
        """Return once the loop ran ``n`` epochs (the guest really runs), or raise what ended it first."""
        with self._progress:
            self._progress.wait_for(lambda: self.summary["epochs"] >= n or self._ended)
            if self.summary["epochs"] >= n:
                return
        self.stop()  # raises the loop's error

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        if self.error:
            raise self.error
        return self.summary


def _epoch_dict(r) -> dict:
    return {
        "epoch": r.epoch, "pattern": r.pattern, "write": r.write, "wall_seconds": r.wall_seconds,
        "start_ns": r.start_ns, "end_ns": r.end_ns, "seed": r.seed,
        "vcpus": [asdict(v) for v in r.vcpus],
    }


def _error_dict(err: KvmctlError) -> dict:
    return {"type": type(err).__name__, "message": err.message, "hint": err.hint,
            "exit_code": int(err.exit_code), "registers": getattr(err, "registers", {})}


# --- parent side ----------------------------------------------------------


class VmProcessError(KvmctlError):
    """An error the VM child reported, with its original exit code."""

    def __init__(self, info: dict):
        super().__init__(info.get("message", "VM process failed"), info.get("hint"))
        self.exit_code = ExitCode(info.get("exit_code", ExitCode.FAILURE))
        self.registers = info.get("registers") or {}
        self.kind = info.get("type")


class VmProcess:
    """Parent-side handle of the VM child. Always ``close()`` it."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvmctl.experiment.vmproc", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.pid = self.proc.pid
        self.info: dict = {}
        self._looping = False

    def _send(self, obj) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _recv(self):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=5)
            raise KvmctlError(f"the VM process ended unexpectedly (exit status {code})",
                              "see its message above; the guest memory may exceed the host's")
        msg = json.loads(line)
        if "error" in msg:
            info = msg["error"]
            if info.get("type") == GuestError.__name__:  # the same type as in-process, registers included
                raise GuestError(info["message"], info.get("hint"), info.get("registers"))
            raise VmProcessError(info)
        return msg["ok"]

    def call(self, cmd: str, **kw):
        self._send({"cmd": cmd, **kw})
        return self._recv()

    def build(self, spec: MachineSpec, cgroup_procs: str | None, epoch_timeout: float | None,
              nice: int = 0, cpus: frozenset[int] | None = None) -> dict:
        d = asdict(spec)
        d["backing"] = spec.backing.value
        self.info = self.call("build", spec=d, cgroup_procs=cgroup_procs, epoch_timeout=epoch_timeout, nice=nice,
                              cpus=sorted(cpus) if cpus else None)
        return self.info

    def epoch(self, pattern: str, write: bool, seed: int = 0) -> dict:
        return self.call("epoch", pattern=pattern, write=write, seed=seed)

    def loop_start(self, pattern: str, write: bool, seed: int = 0, min_epochs: int = 0) -> None:
        """Run epochs back to back in the child until :meth:`loop_stop`.

        With ``min_epochs`` the call returns only once the loop ran that many
        epochs, so that whatever the caller does next meets a running guest.
        """
        self.call("loop_start", pattern=pattern, write=write, seed=seed, min_epochs=min_epochs)
        self._looping = True

    def loop_stop(self) -> dict:
        self._looping = False
        return self.call("loop_stop")

    def backing_path(self, i: int) -> str | None:
        fd = self.info["backing_fds"][i]
        return f"/proc/{self.pid}/fd/{fd}" if fd >= 0 else None

    def close(self) -> None:
        """Finish politely if possible, else end the child we started (by PID)."""
        if self.proc.poll() is None:
            try:
                if self._looping:
                    self.loop_stop()
                self._send({"cmd": "finish"})
                self.proc.stdout.readline()
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - fall through to a hard stop
                pass
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its Popen handle
            self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass


if __name__ == "__main__":
    raise SystemExit(_child_main(int(sys.argv[1]) if len(sys.argv) > 1 else None))
