"""`kvmctl report`: show, render, compare or export experiment reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kvmctl.errors import UsageError
from kvmctl.report.schema import Report
from kvmctl.report.files import load_report, read_report_dict
from kvmctl.report.output import write_atomic


def _default_output(report: str, suffix: str) -> Path:
    path = Path(report)
    return path.with_name(path.stem + suffix)


def _show(args: argparse.Namespace) -> int:
    if args.json:
        sys.stdout.write(json.dumps(read_report_dict(args.report), indent=1) + "\n")
        return 0
    from kvmctl.report.textual import render_text

    sys.stdout.write(render_text(load_report(args.report)))
    return 0


def _html(args: argparse.Namespace) -> int:
    from kvmctl.report.html import render_html

    report = load_report(args.report)
    out = Path(args.output) if args.output else _default_output(args.report, ".html")
    page = render_html(report, title=Path(args.report).name)
    write_atomic(out, page.encode())
    print(f"wrote {out}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from kvmctl.report.diff import diff_json, render_diff

    reports: list[tuple[str, Report]] = [(p, load_report(p)) for p in args.reports]
    if args.json:
        sys.stdout.write(json.dumps(diff_json(reports), indent=1) + "\n")
    else:
        sys.stdout.write(render_diff(reports))
    return 0


def _trace(args: argparse.Namespace) -> int:
    from kvmctl.report.chrome import chrome_trace

    trace = chrome_trace(load_report(args.report))
    out = Path(args.output) if args.output else _default_output(args.report, ".trace.json")
    write_atomic(out, json.dumps(trace).encode())
    print(f"wrote {out} ({len(trace['traceEvents'])} events; open it in https://ui.perfetto.dev or chrome://tracing)")
    return 0


def set_argparser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    p = sub.add_parser("show", help="80-column text summary (or the JSON with --json)")
    p.add_argument("report", help="report JSON written by 'kvmctl experiment --output'")
    p.add_argument("--json", action="store_true", help="print the report's JSON (migrated to the current schema)")
    p.set_defaults(_report_main=_show)

    p = sub.add_parser("html", help="one self-contained HTML page with plots")
    p.add_argument("report")
    p.add_argument("-o", "--output", help="HTML file to write (default: <report>.html)")
    p.set_defaults(_report_main=_html)

    p = sub.add_parser("diff", help="compare reports figure by figure; the first is the baseline")
    p.add_argument("reports", nargs="+", metavar="report")
    p.add_argument("--json", action="store_true", help="machine-readable comparison")
    p.set_defaults(_report_main=_diff)

    p = sub.add_parser("trace", help="timeline in Chrome trace-event format (Perfetto, chrome://tracing)")
    p.add_argument("report")
    p.add_argument("-o", "--output", help="trace JSON to write (default: <report>.trace.json)")
    p.set_defaults(_report_main=_trace)


def main(args: argparse.Namespace) -> int:
    if args.report_command == "diff" and len(args.reports) < 2:
        raise UsageError("report diff needs at least two reports", "give a baseline and one or more to compare")
    return args._report_main(args)
