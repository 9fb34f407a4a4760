#!/usr/bin/env python3
"""Overhead and lost events of `kvmctl watch --pid`: ratios from one run.

    sudo .venv/bin/python scripts/bench_watch.py [--mem 512M] [--rounds 4] [--round-seconds 5]

A kvmctl payload VM (a child process, file-backed RAM) is watched by PID as
any foreign VM would be: `kvmctl watch --pid` finds its RAM in the mappings,
traces it and samples it each second. The same VM runs the same read
workload in rounds, alternately unwatched and watched (A/B/A/B.., so drift
and background noise hit both sides alike); the rate is touches per guest
TSC second, a round's figure is its median epoch rate, and the sides compare
the medians of their rounds (as scripts/bench_experiment.py does).

1. overhead: the watched VM's touch rate is >= 0.99x the unwatched rate.
   On 2 shared CPUs that ratio is noisy, so the noise-free figures are
   printed beside it: the watch's own CPU while it watches (its process,
   after BCC compiled and attached) and its BPF programs' run time (the
   kernel's BPF statistics, switched on for the run and restored), each as
   a share of one CPU; held to 1% together.
2. lost events: every watch report has lost_events 0, at the rate the
   machine's kdamond ages this VM's memory (printed per round).

Each figure is printed with its target and PASS/FAIL; the exit status is 1
if any figure fails. Not a unit test: it takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_experiment import Figure, Round, _round, enable_bpf_stats  # noqa: E402 - a sibling script

from kvmctl import cleanup  # noqa: E402
from kvmctl.errors import KvmctlError  # noqa: E402
from kvmctl.experiment.vmproc import VmProcess  # noqa: E402
from kvmctl.guest.machine import MachineSpec  # noqa: E402
from kvmctl.kvm import BackingKind  # noqa: E402
from kvmctl.units import parse_size  # noqa: E402

OVERHEAD_TARGET = 0.99
CPU_TARGET = 0.01  # the watch's process and BPF programs, share of one CPU while watching
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _bpf_run_ns(pid: int) -> int:
    """run_time_ns summed over the BPF programs a process holds (its fdinfo; needs bpf_stats_enabled)."""
    total = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        if "prog_type:" in text:
            total += next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("run_time_ns:")), 0)
    return total


def _watched_round(vm: VmProcess, pattern: str, seconds: float, out: Path) -> tuple[Round, dict, float, int]:
    """One round with `kvmctl watch --pid` running: (round, its report, its CPU s and BPF ns over the round)."""
    argv = [sys.executable, "-m", "kvmctl", "watch", "--pid", str(vm.pid), "--duration", f"{seconds + 1:g}s",
            "-o", str(out)]
    watch = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        for line in watch.stderr:  # compile + attach outside the measured span: the round starts once it traces
            if "watching process" in line:
                break
        else:
            raise KvmctlError(f"kvmctl watch exited {watch.wait()} before tracing", "run it by hand to see why")
        cpu0, bpf0 = _cpu_s(watch.pid), _bpf_run_ns(watch.pid)
        r = _round(vm, pattern, seconds)
        cpu, bpf = _cpu_s(watch.pid) - cpu0, _bpf_run_ns(watch.pid) - bpf0
        err = watch.communicate(timeout=120)[1]
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGINT)
            watch.wait(30)
    if watch.returncode != 0:
        raise KvmctlError(f"kvmctl watch exited {watch.returncode}: {err.strip()[-300:]}", "run it by hand")
    return r, json.loads(out.read_text()), cpu, bpf


def bench(mem: str, pattern: str, rounds: int, seconds: float, out_dir: Path) -> list[Figure]:
    spec = MachineSpec(mem_bytes=parse_size(mem), vcpus=1, backing=BackingKind.FILE)
    vm = VmProcess()
    handle = cleanup.register(f"stop VM process {vm.pid}", vm.close)
    sides: dict[str, list[Round]] = {"without": [], "with": []}
    lost, cpu_s, bpf_ns, watched_s = [], 0.0, 0, 0.0
    enable_bpf_stats()
    try:
        vm.build(spec, 600.0)
        vm.epoch("seq", True)  # fault in and write back now: rounds measure steady state (see bench_experiment)
        vm.sync_memory()
        vm.epoch("seq", False)
        print(f"    VM process {vm.pid}: {mem} file-backed, workload {pattern} read, {rounds} rounds of "
              f"{seconds:g} s per side", flush=True)
        for i in range(rounds):
            sides["without"].append(_round(vm, pattern, seconds))
            r, report, cpu, bpf = _watched_round(vm, pattern, seconds, out_dir / f"watch{i}.json")
            sides["with"].append(r)
            w = report["trace_window"]
            span = (w["end_ns"] - w["start_ns"]) / 1e9
            cpu_s, bpf_ns, watched_s = cpu_s + cpu, bpf_ns + bpf, watched_s + seconds
            lost.append(report["lost_events"])
            by_class = report["aging"]["by_class"]
            a = sides["without"][-1]
            print(f"    round {i + 1}: without {a.median_rate / 1e6:6.1f} M touches/s ({len(a.touches)} epochs), "
                  f"watched {r.median_rate / 1e6:6.1f} M touches/s ({len(r.touches)} epochs); watch: "
                  f"{report['aging']['calls']:,} aging calls in {span:.1f} s "
                  f"(kdamond {by_class.get('kdamond', 0) / span:,.0f}/s), lost {report['lost_events']}, "
                  f"RAM from {report['target']['ram_source']}; watch CPU {cpu:.2f} s, BPF {bpf / 1e6:.1f} ms", flush=True)
    finally:
        handle.release()
    a = statistics.median(r.median_rate for r in sides["without"])
    b = statistics.median(r.median_rate for r in sides["with"])
    ratio = b / a
    share = (cpu_s + bpf_ns / 1e9) / watched_s
    print(f"    median per-epoch rate unwatched {a / 1e6:.1f} M touches/s, watched {b / 1e6:.1f} M touches/s: "
          f"ratio {ratio:.3f}; over {watched_s:.0f} s watched the watch process used {cpu_s:.2f} s CPU and its "
          f"BPF programs {bpf_ns / 1e6:.1f} ms: {100 * share:.2f}% of one CPU")
    return [Figure("touch rate watched/unwatched", f"{ratio:.3f}x ({b / 1e6:.0f}/{a / 1e6:.0f} M/s)",
                   f">= {OVERHEAD_TARGET}x", ratio >= OVERHEAD_TARGET),
            Figure("watch CPU while watching", f"{100 * share:.2f}% of one CPU", f"<= {100 * CPU_TARGET:g}%",
                   share <= CPU_TARGET),
            Figure("lost events over all watches", str(sum(lost)), "0", sum(lost) == 0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mem", default="512M", help="guest size (default 512M)")
    parser.add_argument("--pattern", default="hotcold:0.25", help="workload pattern (default hotcold:0.25)")
    parser.add_argument("--rounds", type=int, default=4, help="A/B rounds (default 4)")
    parser.add_argument("--round-seconds", type=float, default=5.0, help="length of one side of a round")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_watch: needs root (BPF, /proc of another process): run it with sudo", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kvmctl-bench-watch-") as tmp:
        try:
            print("== overhead and lost events of kvmctl watch --pid on a payload VM", flush=True)
            figures = bench(args.mem, args.pattern, args.rounds, args.round_seconds, Path(tmp))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except KvmctlError as err:
            print(f"bench_watch: {err.one_line()}", file=sys.stderr)
            return 1
        finally:
            cleanup.run_all()
    print()
    for f in figures:
        print(f.line())
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
