"""`kvmctl run`: run the touch payload in a fresh VM and print its figures.

Each epoch's row is printed (and flushed) as the epoch ends, to a terminal or
a pipe alike; the totals follow the last one. Progress goes to stderr: a bar
with the time left when stderr is a terminal, a plain line every few seconds
otherwise. Ctrl-C ends the run after the epochs already measured, which are
still printed (totals and JSON marked incomplete) before exit status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from kvmctl.commands.flags import EPOCH_TIMEOUT, add_flags, add_vm_shape, flag_hints
from kvmctl.commands.runview import Limits, RunProgress, epoch_header, epoch_row, head_line, totals_lines
from kvmctl.errors import Interrupted, UsageError
from kvmctl.guest.machine import EpochResult, GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.kvm import Memslot
from kvmctl.units import parse_duration

_DEFAULTS = {"mem": "1G", "vcpus": 1, "backing": "anon", "memslots": 1, "guest_page": "4K", "share": False,
             "pattern": "seq", "access": "write", "seed": 0, "epoch_timeout": "600s"}


def set_argparser(parser: argparse.ArgumentParser) -> None:
    add_vm_shape(parser, _DEFAULTS, fill=True)
    add_flags(parser, (EPOCH_TIMEOUT,), _DEFAULTS, fill=True)
    parser.add_argument("--epochs", type=int, default=None, help="passes over the memory (default 10)")
    parser.add_argument("--duration", help="instead of --epochs: run epochs until this much time has passed (e.g. 5s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display on stderr")


def main(args) -> int:
    with flag_hints():
        return _run(args)


def _limits(args) -> Limits:
    if args.epochs is not None and args.duration is not None:
        raise UsageError("--epochs and --duration both say when to stop", "give one of them")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}", "use --epochs 1 or more")
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    return Limits(args.epochs if args.epochs is not None else (None if duration else 10), duration)


def _run(args) -> int:
    from kvmctl.cli import signals_deferred  # here: kvmctl.cli imports this module

    spec = MachineSpec.from_shape(args.mem, args.vcpus, args.backing, args.backing_path, args.memslots,
                                  args.guest_page, args.share)
    pattern = Pattern.parse(args.pattern)
    limits = _limits(args)
    timeout = parse_duration(args.epoch_timeout, "--epoch-timeout")
    write = args.access == "write"
    stream = not args.json

    t0 = time.monotonic()
    results: list[tuple[EpochResult, int]] = []
    interrupted: Interrupted | None = None
    try:
        machine = GuestMachine(spec, epoch_timeout=timeout)
    except Interrupted as err:
        raise _interrupted(err, 0, None) from None
    with machine:
        setup_s = time.monotonic() - t0
        if stream:
            _out([head_line(spec, str(pattern), write), epoch_header()])
        distinct = None
        t_run = time.monotonic()
        try:
            with RunProgress(None if args.quiet else sys.stderr, limits) as progress:
                while not limits.done(len(results), time.monotonic() - t_run):
                    r = machine.run_epoch(pattern, write=write, seed=args.seed)
                    with signals_deferred():  # an epoch that ended is both counted and printed
                        truth = machine.ground_truth(pattern, r.epoch, args.seed)
                        distinct = truth if distinct is None else distinct | truth
                        results.append((r, int(truth.sum())))
                        if stream:
                            _out([epoch_row(r, results[-1][1])])
                    progress.update(len(results), time.monotonic() - t_run)
            machine.finish()
        except Interrupted as err:  # the epochs measured so far are kept; the one cut short is not
            interrupted = err
        with signals_deferred():  # a second Ctrl-C must not cut the output in half
            stats = machine.vm_stats()
            memslots = [_memslot_json(m) for m in machine.data_memslots]
    with signals_deferred():
        summary = _summary(spec, pattern, write, results, 0 if distinct is None else int(distinct.sum()), setup_s,
                           time.monotonic() - t0, stats, memslots, machine.tsc_hz, interrupted)
        if args.json:
            json.dump(summary, sys.stdout, indent=2)
            print(flush=True)
        else:
            _out(totals_lines(summary))
    if interrupted:
        raise _interrupted(interrupted, len(results), "JSON" if args.json else "text")
    return 0


def _out(lines: list[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()  # rows reach a pipe as epochs end, not when the buffer fills


def _interrupted(err: Interrupted, epochs: int, printed: str | None) -> Interrupted:
    """The signal's error, saying what this run printed (``printed``: "text", "JSON" or None)."""
    if printed is None:
        kept = "before the VM ran its first epoch: nothing was measured"
    elif not epochs:
        kept = "before the first epoch ended: the totals printed are empty"
    elif printed == "JSON":
        kept = f'the JSON printed covers the {epochs} epoch(s) measured before it ("complete": false)'
    else:
        kept = f"the {epochs} epoch(s) measured before it are printed, with totals over them"
    return Interrupted(err.signum, f"{kept}; the VM is gone and nothing else on the host changed")


def _memslot_json(m: Memslot) -> dict:
    out = asdict(m)
    out["backing_path"] = out.pop("path")
    return out


def _summary(spec, pattern, write, results, distinct, setup_s, wall_s, stats, memslots, tsc_hz,
             interrupted: Interrupted | None) -> dict:
    touches = sum(r.touches for r, _ in results)
    guest_s = sum(r.guest_seconds for r, _ in results)
    steady = results[1:] or results  # epoch 0 includes the first-touch faults
    steady_touches = sum(r.touches for r, _ in steady)
    steady_s = sum(r.guest_seconds for r, _ in steady)
    return {
        "complete": interrupted is None,
        "incomplete_reason": None if interrupted is None else f"{interrupted.message} after {len(results)} epoch(s)",
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
