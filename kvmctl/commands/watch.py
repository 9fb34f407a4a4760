"""`kvmctl watch --pid PID`: how the host ages the memory of a VM kvmctl did not create."""

from __future__ import annotations

import argparse
import sys

from kvmctl import cleanup
from kvmctl.commands.flags import print_report
from kvmctl.errors import Interrupted
from kvmctl.units import parse_duration


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=int, required=True, help="the VMM process (qemu-system-x86_64, firecracker, "
                                                               "cloud-hypervisor) to watch")
    parser.add_argument("--qmp", metavar="SOCKET",
                        help="QEMU's QMP unix socket (-qmp unix:SOCKET,server=on): RAM blocks with their "
                             "guest-physical place, vCPU threads, KVM stats")
    parser.add_argument("--duration", help="stop after this long (default: until Ctrl-C or the process exits)")
    parser.add_argument("--interval", default="1s", help="sample and time-series interval (default 1s)")
    parser.add_argument("--output", "-o", default="watch.json", help="report file (default watch.json)")
    parser.add_argument("--json", action="store_true", help="print the report JSON instead of the text summary")
    parser.add_argument("--quiet", "-q", action="store_true", help="no live table, no progress messages")


def main(args) -> int:
    from kvmctl.cli import signals_allowed, signals_deferred  # here: kvmctl.cli imports this module

    duration = parse_duration(args.duration, "--duration") if args.duration else None
    interval = parse_duration(args.interval, "--interval")
    error: BaseException | None = None
    with signals_deferred() as late:
        from kvmctl.report.files import write_report
        from kvmctl.report.output import check_writable
        from kvmctl.watch.runner import Watch, WatchOptions

        check_writable(args.output)
        live = not args.quiet and not args.json and sys.stderr.isatty()
        say = (lambda msg: None) if args.quiet else (lambda msg: print(f"kvmctl watch: {msg}", file=sys.stderr))
        watch = Watch(WatchOptions(args.pid, args.qmp, duration, interval), ["kvmctl", *sys.argv[1:]],
                      progress=say)
        try:
            with signals_allowed(late):
                if live:
                    from kvmctl.watch.live import LiveView

                    with LiveView(f"kvmctl watch --pid {args.pid}") as view:
                        watch.on_row = view.update
                        watch.run()
                else:
                    watch.run()
        except BaseException as err:  # the partial report is still written below
            error = err
        cleanup.run_all()
        if late and error is None:
            error = Interrupted(late.pop(0))
        report = watch.report
        if isinstance(error, Interrupted):
            report.complete = False
            report.incomplete_reason = report.incomplete_reason or error.one_line()
        if _measured(report):
            path = write_report(report, args.output)
            print_report(report, args.json, error)
            say(f"report written to {path}" + ("" if report.complete else " (incomplete)"))
        late.clear()
    if error:
        raise error
    return 0


def _measured(report) -> bool:
    """A report is written once something was measured: the probes' window opened."""
    return report.trace_window.start_ns is not None
