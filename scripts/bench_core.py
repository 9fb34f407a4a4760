#!/usr/bin/env python3
"""Speed of kvmctl's core against C references, measured in one run.

  (a) guest touch rate of `seq` write over 64 MiB and 1 GiB (steady state: the
      median epoch after the first) vs a native C loop making the same stores
      on the host over an already-faulted buffer          target ratio >= 0.9
  (b) VM with a 1 GiB memslot and one vCPU, from /dev/kvm to the first exit
      (the touch payload's PORT_SYNC): median of --runs    target < 10 ms
      (the same with raw ioctls in C is printed for reference)
  (c) port I/O exits per second through GuestMachine's exit-handling loop
      (pingpong payload) vs the same loop in C            target ratio >= 0.5

The C programs (scripts/bench/*.c) are compiled with gcc -O2 into a temporary
directory. The C VM runs the very guest Python built: this script writes the
system area, sregs and regs of a built GuestMachine to an image file, so both
sides execute identical guest code on identical page tables.

Not a unit test: run it by hand, e.g. `python scripts/bench_core.py`. Exit
status 1 when a target is missed, 2 when the host cannot run it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import KvmctlError
from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.mailbox import SYNC_READY, Port
from kvmctl.guest.patterns import Pattern
from kvmctl.probe.kvm import kvm_module
from kvmctl.units import PAGE_SIZE, format_size, parse_size

HERE = Path(__file__).resolve().parent
IMAGE_MAGIC = b"KVMCTLIM"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    reference: float | None  # the C figure this one is compared with
    ratio: float | None  # value / reference (None for absolute targets)
    target: str
    passed: bool
    note: str = ""


def compile_c(tmp: Path) -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("bench_core: gcc is needed to build the C references (apt-get install gcc)")
    out = {}
    for src in sorted((HERE / "bench").glob("*.c")):
        exe = tmp / src.stem
        subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
        out[src.stem] = exe
    return out


def run_c(exe: Path, *args) -> list[list[str]]:
    p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench_core: {exe.name} failed: {p.stderr.strip()}")
    return [line.split() for line in p.stdout.splitlines()]


def write_image(m: GuestMachine, path: Path) -> None:
    """The guest exactly as GuestMachine built it, for scripts/bench/kvm_guest.c."""
    vcpu = m.vm.vcpus[0]
    system = ctypes.string_at(m.system.hva, m.layout.size)
    head = struct.pack("<8sQQ", IMAGE_MAGIC, len(system), len(m.data_memslots))
    slots = b"".join(struct.pack("<QQ", s.gpa_start, s.size) for s in m.data_memslots)
    path.write_bytes(head + slots + bytes(vcpu.get_sregs()) + bytes(vcpu.get_regs()) + system)


# --- (a) touch rate --------------------------------------------------------------------------------


def bench_touch(exe: Path, size: int, passes: int, rounds: int) -> Figure:
    seq = Pattern.parse("seq")
    pages = size // PAGE_SIZE
    per_round = max(1, passes // rounds)
    guest, wall, native = [], [], []
    native_proc = subprocess.Popen([str(exe), str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if native_proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"bench_core: {exe.name} did not start")
        with GuestMachine(MachineSpec(size, 1), epoch_timeout=120) as m:
            m.run_epoch(seq, write=True)  # epoch 0 takes the first-touch faults: not steady state
            for _ in range(rounds):  # interleaved, so load changes hit both sides alike
                for _ in range(per_round):
                    r = m.run_epoch(seq, write=True)
                    guest.append(r.touches / r.guest_seconds)
                    wall.append(r.touches / r.wall_seconds)
                native_proc.stdin.write(f"{per_round}\n")
                native_proc.stdin.flush()
                for _ in range(per_round):
                    ns = int(native_proc.stdout.readline().split()[2])
                    native.append(pages / (ns / 1e9))
            m.finish()
    finally:
        native_proc.stdin.close()
        native_proc.wait()
    g, n = statistics.median(guest), statistics.median(native)
    return Figure(f"touch rate seq write {format_size(size)}", g / 1e6, "M pages/s", n / 1e6, g / n,
                  ">= 0.9x native", g / n >= 0.9,
                  f"median of {len(guest)} passes in {rounds} interleaved rounds; guest rdtsc timing "
                  f"(host wall incl. exit: {statistics.median(wall) / 1e6:.1f}; best guest {max(guest) / 1e6:.1f}, "
                  f"best native {max(native) / 1e6:.1f})")


# --- (b) VM creation to first exit ---------------------------------------------------------------------


def bench_create(exe: Path, tmp: Path, runs: int) -> Figure:
    spec = MachineSpec(1 << 30, 1)
    py, c = [], []
    for i in range(runs + 2):
        t0 = time.perf_counter()
        m = GuestMachine(spec)
        try:
            if i == 0:  # a warm-up run, not timed: the image must be the guest before its first instruction
                write_image(m, tmp / "touch.img")
            m.start()  # up to the payload's first `out PORT_SYNC`
            dt = time.perf_counter() - t0
        finally:
            m.close()
        if i >= 2:  # the first two warm caches (imports, numpy, page cache of the payload)
            py.append(dt)
            # C right after, so both see the same load; the C timing starts at open(/dev/kvm)
            (_, ns, data), = run_c(exe, tmp / "touch.img", "create", 1, int(Port.SYNC))
            if int(data) != SYNC_READY:  # the C VM must start where Python's did: at the payload's entry
                raise SystemExit(f"bench_core: C guest's first PORT_SYNC carried {int(data):#x}, not the ready marker")
            c.append(int(ns) / 1e9)
    p, r = statistics.median(py), statistics.median(c)
    return Figure("VM (1 GiB memslot, 1 vCPU) to first exit", p * 1e3, "ms", r * 1e3, None, "< 10 ms", p < 0.010,
                  f"median of {runs}, best {min(py) * 1e3:.2f}; C = raw ioctls, same guest image, "
                  f"best {min(c) * 1e3:.2f} (x{p / r:.1f})")


# --- (c) exit-handling loop ----------------------------------------------------------------------


def bench_exits(exe: Path, tmp: Path, exits: int, rounds: int) -> Figure:
    py_rates, c_rates = [], []
    for _ in range(rounds):  # interleaved, so load changes hit both sides alike
        with GuestMachine(MachineSpec(2 << 20, 1, payload="pingpong"), epoch_timeout=120) as m:
            m.mailboxes[0].arg0 = exits
            write_image(m, tmp / "pingpong.img")
            t0 = time.perf_counter()
            m.run_payload(arg0=exits)
            dt = time.perf_counter() - t0
            if m.ping_exits != exits:
                raise SystemExit(f"bench_core: pingpong made {m.ping_exits} exits, expected {exits}")
        py_rates.append(exits / dt)
        (_, n, ns), = run_c(exe, tmp / "pingpong.img", "loop", int(Port.PING), int(Port.EXIT))
        if int(n) != exits:
            raise SystemExit(f"bench_core: C loop saw {n} exits, expected {exits}")
        c_rates.append(int(n) / (int(ns) / 1e9))
    py, c = statistics.median(py_rates), statistics.median(c_rates)
    return Figure("port I/O exits (pingpong)", py / 1e3, "k exits/s", c / 1e3, py / c, ">= 0.5x C", py / c >= 0.5,
                  f"median of {rounds} rounds of {exits} exits")


# --- driver -------------------------------------------------------------------------------------------------


def print_figures(figures: list[Figure]) -> None:
    print(f"{'figure':<42} {'kvmctl':>10} {'C ref':>10} {'ratio':>6}  {'target':<15} result")
    for f in figures:
        ref = f"{f.reference:10.2f}" if f.reference is not None else f"{'-':>10}"
        ratio = f"{f.ratio:6.2f}" if f.ratio is not None else f"{'-':>6}"
        print(f"{f.name:<42} {f.value:10.2f} {ref} {ratio}  {f.target:<15} {'PASS' if f.passed else 'FAIL'}")
        print(f"{'':<42} ({f.unit}; {f.note})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64M,1G", help="touch benchmark sizes (default 64M,1G)")
    ap.add_argument("--passes", type=int, default=60, help="steady-state passes per size (default 60)")
    ap.add_argument("--runs", type=int, default=20, help="VM creations to time (default 20)")
    ap.add_argument("--exits", type=int, default=20000, help="port I/O exits per round (default 20000)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="exit-loop rounds; the touch benchmark interleaves twice as many (default 3)")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    load = os.getloadavg()
    print(f"kvmctl core benchmark: KVM module {kvm_module()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work skews every figure)")
    try:
        with tempfile.TemporaryDirectory(prefix="kvmctl-bench-") as d:
            tmp = Path(d)
            exe = compile_c(tmp)
            figures = [bench_touch(exe["touch_native"], parse_size(s), args.passes, args.rounds * 2)
                       for s in args.sizes.split(",")]
            figures.append(bench_create(exe["kvm_guest"], tmp, args.runs))
            figures.append(bench_exits(exe["kvm_guest"], tmp, args.exits, args.rounds))
    except KvmctlError as err:
        print(f"bench_core: {err.one_line()}", file=sys.stderr)
        return 2
    print_figures(figures)
    print(f"total {time.monotonic() - t_start:.1f} s; "
          f"{sum(f.passed for f in figures)}/{len(figures)} targets met")
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
