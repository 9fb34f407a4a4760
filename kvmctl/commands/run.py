"""`kvmctl run`: run the touch payload in a fresh VM and print its figures."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from kvmctl.commands.flags import EPOCH_TIMEOUT, add_flags, add_vm_shape, flag_hints
from kvmctl.errors import UsageError
from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.kvm import Memslot
from kvmctl.units import format_size, parse_duration

_DEFAULTS = {"mem": "1G", "vcpus": 1, "backing": "anon", "memslots": 1, "guest_page": "4K", "share": False,
             "pattern": "seq", "access": "write", "seed": 0, "epoch_timeout": "600s"}


def set_argparser(parser: argparse.ArgumentParser) -> None:
    add_vm_shape(parser, _DEFAULTS, fill=True)
    add_flags(parser, (EPOCH_TIMEOUT,), _DEFAULTS, fill=True)
    parser.add_argument("--epochs", type=int, default=None, help="passes over the memory (default 10)")
    parser.add_argument("--duration", help="run epochs until this much time has passed (e.g. 5s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def main(args) -> int:
    with flag_hints():
        return _run(args)


def _run(args) -> int:
    spec = MachineSpec.from_shape(args.mem, args.vcpus, args.backing, args.backing_path, args.memslots,
                                  args.guest_page, args.share)
    pattern = Pattern.parse(args.pattern)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}", "use --epochs 1 or more")
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    max_epochs = args.epochs if args.epochs is not None else (None if duration else 10)
    timeout = parse_duration(args.epoch_timeout, "--epoch-timeout")
    write = args.access == "write"
    show = not args.quiet and not args.json and sys.stderr.isatty()

    t0 = time.monotonic()
    with GuestMachine(spec, epoch_timeout=timeout) as machine:
        setup_s = time.monotonic() - t0
        results = []
        distinct = None
        with _progress(show, max_epochs) as tick:
            while (max_epochs is None or len(results) < max_epochs) and (
                duration is None or time.monotonic() - t0 < duration or not results
            ):
                r = machine.run_epoch(pattern, write=write, seed=args.seed)
                truth = machine.ground_truth(pattern, r.epoch, args.seed)
                distinct = truth if distinct is None else distinct | truth
                results.append((r, int(truth.sum())))
                tick(r)
        machine.finish()
        stats = machine.vm_stats()
        memslots = [_memslot_json(m) for m in machine.data_memslots]
    summary = _summary(spec, pattern, write, results, int(distinct.sum()), setup_s, time.monotonic() - t0,
                       stats, memslots, machine.tsc_hz)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_text(summary)
    return 0


def _memslot_json(m: Memslot) -> dict:
    out = asdict(m)
    out["backing_path"] = out.pop("path")
    return out


def _summary(spec, pattern, write, results, distinct, setup_s, wall_s, stats, memslots, tsc_hz) -> dict:
    touches = sum(r.touches for r, _ in results)
    guest_s = sum(r.guest_seconds for r, _ in results)
    steady = results[1:] or results  # epoch 0 includes the first-touch faults
    steady_touches = sum(r.touches for r, _ in steady)
    steady_s = sum(r.guest_seconds for r, _ in steady)
    return {
        "vcpus": spec.vcpus,
        "mem_bytes": spec.mem_bytes,
        "backing": spec.backing.value,
        "memslots": memslots,
        "pattern": str(pattern),
        "access": "write" if write else "read",
        "epochs": len(results),
        "pages_touched": touches,
        "distinct_pages_touched": distinct,
        "guest_seconds": guest_s,
        "wall_seconds": wall_s,
        "setup_seconds": setup_s,
        "touch_rate_pages_per_s": touches / guest_s if guest_s else None,
        "steady_touch_rate_pages_per_s": steady_touches / steady_s if steady_s else None,
        "tsc_hz": tsc_hz,
        "per_epoch": [
            {
                "epoch": r.epoch,
                "pages_touched": r.touches,
                "distinct_pages": d,
                "guest_seconds": r.guest_seconds,
                "wall_seconds": r.wall_seconds,
                "per_vcpu": [{"vcpu": v.vcpu, "touched": v.touched, "guest_seconds": v.guest_seconds}
                             for v in r.vcpus],
            }
            for r, d in results
        ],
        "vm_stats": stats,
        "timing": "guest_seconds from rdtsc in the guest around each pass (KVM_GET_TSC_KHZ); wall_seconds on the host",
    }


def _print_text(s: dict) -> None:
    print(f"{s['vcpus']} vCPU(s), {format_size(s['mem_bytes'])} {s['backing']} in {len(s['memslots'])} memslot(s), "
          f"pattern {s['pattern']} ({s['access']})")
    print(f"{'epoch':>5} {'pages':>12} {'distinct':>10} {'guest ms':>10} {'wall ms':>10} {'Mpages/s':>10}")
    for e in s["per_epoch"]:
        rate = e["pages_touched"] / e["guest_seconds"] / 1e6 if e["guest_seconds"] else 0
        print(f"{e['epoch']:>5} {e['pages_touched']:>12} {e['distinct_pages']:>10} {e['guest_seconds'] * 1e3:>10.3f} "
              f"{e['wall_seconds'] * 1e3:>10.3f} {rate:>10.2f}")
    rate = s["touch_rate_pages_per_s"] or 0
    steady = s["steady_touch_rate_pages_per_s"] or 0
    print(f"total: {s['pages_touched']} touches ({s['distinct_pages_touched']} distinct pages) in "
          f"{s['guest_seconds']:.3f} s guest / {s['wall_seconds']:.3f} s wall (setup {s['setup_seconds'] * 1e3:.1f} ms)")
    print(f"rate: {rate / 1e6:.2f} M pages/s overall, {steady / 1e6:.2f} M pages/s after the first epoch")
    st = s["vm_stats"]
    keys = [k for k in ("pages_4k", "pages_2m", "pages_1g", "mmu_cache_miss", "mmu_shadow_zapped", "max_mmu_rmap_size")
            if k in st]
    print("vm stats: " + ", ".join(f"{k}={st[k]}" for k in keys))


class _progress:
    """A rich progress bar on stderr for interactive runs; a no-op otherwise."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda r: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("epoch {task.completed}"), BarColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task("run", total=self.total)
        return lambda r: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
