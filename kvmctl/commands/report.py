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
    if args.html:
        from kvmctl.report.html_diff import render_html_diff

        write_atomic(Path(args.html), render_html_diff(reports).encode())
        print(f"wrote {args.html}", file=sys.stderr)
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

    actions = (
        ("show", _show, "80-column text summary (or the JSON with --json)",
         "print the report's JSON (migrated to the current schema)", None),
        ("html", _html, "one self-contained HTML page with plots", None, "HTML file to write (default: <report>.html)"),
        ("diff", _diff, "compare reports figure by figure; the first is the baseline", "machine-readable comparison",
         None),
        ("trace", _trace, "timeline in Chrome trace-event format (Perfetto, chrome://tracing)", None,
         "trace JSON to write (default: <report>.trace.json)"),
    )
    for name, action, help_text, json_help, output_help in actions:
        p = sub.add_parser(name, help=help_text)
        if name == "diff":
            p.add_argument("reports", nargs="+", metavar="report")
            p.add_argument("--html", metavar="FILE", help="also write the comparison and every side's plots as one "
                                                          "HTML page")
        else:
            p.add_argument("report", help="report JSON written by 'kvmctl experiment --output'")
        if json_help:
            p.add_argument("--json", action="store_true", help=json_help)
        if output_help:
            p.add_argument("-o", "--output", help=output_help)
        p.set_defaults(_report_main=action)


def main(args: argparse.Namespace) -> int:
    if args.report_command == "diff" and len(args.reports) < 2:
        raise UsageError("report diff needs at least two reports", "give a baseline and one or more to compare")
    return args._report_main(args)
