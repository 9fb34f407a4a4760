"""`kvmctl info`: what this host offers for aging work, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvmctl.probe import HostCaps, Item, probe_host

_MAX_VALUE_CHARS = 60


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the probe as one JSON object")
    parser.add_argument("--no-bpf", action="store_true",
                        help="skip BPF load/attach attempts (faster; BPF items say 'not tried')")
    parser.add_argument("--missing", action="store_true", help="list only missing or degraded items")


def format_value(value) -> str:
    """A short, one-line rendering of an item's value for the table."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            text = f"{len(value)}: " + ", ".join(value)
        else:
            text = f"{len(value)} entr{'y' if len(value) == 1 else 'ies'}"
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={len(v) if isinstance(v, (list, dict)) else format_value(v)}" for k, v in value.items())
    else:
        text = str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 1] + "…"


def _status(item: Item) -> Text:
    if item and item.remedy:
        return Text("yes*", style="yellow")
    return Text("yes", style="green") if item else Text("no", style="red")


def _explain(item: Item) -> str:
    parts = [item.reason] if item.reason else []
    if item.remedy:
        parts.append(f"fix: {item.remedy}")
    return " — ".join(parts)


def render(caps: HostCaps, console: Console, missing_only: bool = False) -> None:
    k = caps.kernel
    console.print(f"[bold]kernel[/bold] {k.release} ({k.machine}), config from {k.config_source or 'nowhere'}, "
                  f"{'root' if k.root else 'not root'}; [bold]KVM[/bold] {caps.kvm.module.value or 'none'}, "
                  f"[bold]MMU[/bold] {caps.mmu.value}; probed in {caps.probe_seconds:.2f} s")
    for title, items in caps.groups():
        rows = [(n, i) for n, i in items.items() if not missing_only or not i or i.reason]
        if not rows:
            continue
        table = Table(title=title, title_justify="left", title_style="bold", show_header=True, expand=False)
        table.add_column("item", no_wrap=True)
        table.add_column("ok", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("reason / fix", overflow="fold", ratio=1)
        for name, item in rows:
            table.add_row(name, _status(item), format_value(item.value), _explain(item))
        console.print(table)
    console.print("yes* = available, with a caveat and a fix")
    for note in caps.notes:
        console.print(f"note: {note}")


def main(args: argparse.Namespace) -> int:
    caps = probe_host(load_bpf=not args.no_bpf)
    if args.json:
        json.dump(caps.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    # Piped output gets a wide, colourless table instead of rich's 80-column default.
    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    render(caps, Console(width=width), missing_only=args.missing)
    return 0
