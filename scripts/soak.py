#!/usr/bin/env python3
"""Soak benchmark: a long experiment with concurrent aging; does kvmctl's own memory stay flat?

Runs ``kvmctl experiment --mode concurrent`` with more passes than fit in the
time budget, samples the resident set size of the controller (the kvmctl
process) and of its VM child with psutil every ``--sample`` seconds, and sends
SIGINT when the budget is spent (the tool then writes its report, marked
incomplete, with the lost-event count). It prints the RSS over time and a
verdict: flat when the median of the last quarter of samples (after a warm-up) is within
``--tolerance`` of the median of the first quarter, per process.

This is a benchmark, not a unit test: it takes minutes and wants a quiet host.

    sudo .venv/bin/python scripts/soak.py                # 10 minutes
    sudo .venv/bin/python scripts/soak.py --minutes 2 --mem 256M --no-trace
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MIB = 1 << 20


@dataclass
class Sample:
    t: float
    parent_rss: int
    child_rss: int  # sum over the VM child (and any other descendants)


@dataclass
class Verdict:
    name: str
    first_median: float
    last_median: float
    peak: int

    @property
    def ratio(self) -> float:
        return self.last_median / self.first_median if self.first_median else float("inf")


@dataclass
class SoakResult:
    samples: list[Sample] = field(default_factory=list)
    exit_code: int | None = None
    report: dict | None = None


def quarter_medians(values: list[int]) -> tuple[float, float]:
    """Median of the first and of the last quarter of a series (at least one sample each)."""
    q = max(1, len(values) // 4)
    return statistics.median(values[:q]), statistics.median(values[-q:])


def verdicts(samples: list[Sample]) -> list[Verdict]:
    out = []
    for name, values in (("controller", [s.parent_rss for s in samples]), ("VM child", [s.child_rss for s in samples])):
        first, last = quarter_medians(values)
        out.append(Verdict(name, first, last, max(values)))
    return out


def _rss(proc: psutil.Process) -> tuple[int, int]:
    parent = proc.memory_info().rss
    child = 0
    for c in proc.children(recursive=True):
        try:
            child += c.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return parent, child


def run(args: argparse.Namespace, report_path: Path) -> SoakResult:
    cmd = [sys.executable, "-m", "kvmctl", "experiment", "--mem", args.mem, "--mode", "concurrent",
           "--passes", "100000", "--settle", args.settle, "--pattern", args.pattern, "-o", str(report_path), "-q"]
    if args.no_trace:
        cmd.append("--no-trace")
    result = SoakResult()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    try:
        # The first seconds are setup (BCC compile, populate): sample from the first pass on.
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                parent, child = _rss(ps)
            except psutil.NoSuchProcess:
                break
            if child:  # the VM child exists
                result.samples.append(Sample(time.monotonic() - t0, parent, child))
            time.sleep(args.sample)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # our own child, by its handle
        try:
            result.exit_code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            result.exit_code = proc.wait()
    if report_path.exists():
        result.report = json.loads(report_path.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the experiment runs (default 10)")
    ap.add_argument("--mem", default="256M", help="guest memory (default 256M)")
    ap.add_argument("--pattern", default="hotcold:0.25")
    ap.add_argument("--settle", default="1s", help="guest time before each pass (default 1s)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds of setup (BCC compile, populate) left out of the verdict (default 30)")
    ap.add_argument("--tolerance", type=float, default=0.10, help="allowed last/first quarter growth (default 0.10)")
    ap.add_argument("--no-trace", action="store_true", help="attach no BPF programs (no lost-event count)")
    ap.add_argument("--keep", metavar="REPORT", help="keep the report at this path")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kvmctl-soak-") as tmp:
        report_path = Path(args.keep) if args.keep else Path(tmp) / "soak.json"
        res = run(args, report_path)

    print(f"soak: {args.minutes:g} min, --mem {args.mem}, concurrent aging, trace {'off' if args.no_trace else 'on'}; "
          f"kvmctl exit {res.exit_code} (130 = stopped by SIGINT at the deadline, as planned)")
    if len(res.samples) < 4:
        print(f"soak: only {len(res.samples)} RSS samples; run longer", file=sys.stderr)
        return 1
    print(f"{'t [s]':>8} {'controller MiB':>15} {'VM child MiB':>13}")
    step = max(1, len(res.samples) // 20)
    for s in res.samples[::step] + ([res.samples[-1]] if (len(res.samples) - 1) % step else []):
        print(f"{s.t:8.0f} {s.parent_rss / MIB:15.1f} {s.child_rss / MIB:13.1f}")
    steady = [s for s in res.samples if s.t >= args.warmup] or res.samples
    flat = True
    for v in verdicts(steady):
        ok = v.ratio <= 1 + args.tolerance
        flat &= ok
        print(f"{v.name}: first-quarter median {v.first_median / MIB:.1f} MiB, last-quarter median "
              f"{v.last_median / MIB:.1f} MiB, ratio {v.ratio:.3f}, peak {v.peak / MIB:.1f} MiB -> "
              f"{'flat' if ok else 'GROWS'}")
    rep = res.report or {}
    passes = len(rep.get("passes") or [])
    lost = rep.get("lost_events")
    aging = (rep.get("aging") or {}).get("calls")
    if lost is None:
        reason = (rep.get("probes") or {}).get("not_observable", {}).get("lost_events", "no report")
        print(f"passes completed: {passes}; lost events: not observable ({reason})")
        dropped = None
    else:
        kinds = lost_kinds(rep.get("notes") or [])
        # Pages clipped from the per-gfn heat map (an event wider than the per-event loop, or past the
        # map's end) are still in every total: they are not events lost.
        dropped = sum(v for k, v in kinds.items() if ".gfn_" not in k)
        print(f"passes completed: {passes}; aging calls traced: {aging}; lost: {lost} "
              f"({', '.join(f'{k}={v}' for k, v in kinds.items()) or 'none'}); events dropped: {dropped}")
    ok = flat and (dropped in (0, None) or args.no_trace)
    print(f"verdict: {'PASS' if ok else 'FAIL'} (memory {'flat' if flat else 'grows'}, "
          f"events dropped {dropped if dropped is not None else 'n/a'})")
    return 0 if ok else 1


def lost_kinds(notes: list[str]) -> dict[str, int]:
    """{'aging.gfn_clipped': 65024, ...} from the report's "lost events: k=v, ..." note."""
    out: dict[str, int] = {}
    for note in notes:
        if note.startswith("lost events: "):
            for item in note[len("lost events: "):].split(", "):
                key, _, value = item.partition("=")
                if value.isdigit():
                    out[key] = out.get(key, 0) + int(value)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
