"""Flag groups the commands share, declared once, and the flag hints the commands add to errors.

The VM shape (``--mem``, ``--vcpus``, ``--backing``, ...) means the same to
``kvmctl run`` and ``kvmctl experiment``: one declaration, each command
giving its defaults. ``run`` fills them in; ``experiment`` leaves them unset
(None) so that a TOML spec can supply them and the help still names the
default. The layers below raise errors in their own terms; a command maps the
ones a flag can fix to that flag (:func:`flag_hints`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmctl.errors import KvmctlError
from kvmctl.guest.patterns import PATTERN_HELP
from kvmctl.kvm.memory import GuestMemoryError


@dataclass(frozen=True)
class Flag:
    name: str  # "--mem"
    help: str
    options: dict[str, Any] = field(default_factory=dict)  # argparse keywords besides default and help

    @property
    def key(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


VM_SHAPE = (
    Flag("--mem", "guest data memory"),
    Flag("--vcpus", "vCPUs", {"type": int}),
    Flag("--backing", "anon|file|memfd|thp|hugetlb|hugetlb1g", {"metavar": "KIND"}),
    Flag("--backing-path", "file backing: use this file instead of an unlinked temporary one"),
    Flag("--memslots", "split the data memory into N memslots", {"type": int}),
    Flag("--guest-page", "guest page-table leaf size for data: 4K or 2M"),
    Flag("--share", "every vCPU touches the whole memory (default: partition)", {"action": "store_true"}),
    Flag("--pattern", PATTERN_HELP),
    Flag("--access", "read or write", {"choices": ("read", "write")}),
    Flag("--seed", "seed of the random pattern", {"type": int}),
)
EPOCH_TIMEOUT = Flag("--epoch-timeout", "watchdog: fail if a guest epoch takes longer")

# Errors a flag can fix, and the hint that names it.
FLAG_HINTS: dict[type[KvmctlError], str] = {
    GuestMemoryError: "reduce --mem or free memory",
}


def add_flags(group, flags: tuple[Flag, ...], defaults: Mapping[str, Any], fill: bool) -> None:
    """Add ``flags``; the default is ``defaults[key]``, set (``fill``) or only named in the help."""
    for flag in flags:
        default = defaults.get(flag.key)
        shown = f" (default {default})" if default not in (None, False, "") else ""
        group.add_argument(flag.name, default=default if fill else None, help=flag.help + shown, **flag.options)


def add_vm_shape(parser: argparse.ArgumentParser, defaults: Mapping[str, Any], fill: bool):
    """The VM-shape flags in a "guest" group, which is returned for a command's own guest flags."""
    group = parser.add_argument_group("guest")
    add_flags(group, VM_SHAPE, defaults, fill)
    return group


def vm_shape_keys() -> tuple[str, ...]:
    return tuple(f.key for f in VM_SHAPE)


@contextlib.contextmanager
def flag_hints() -> Iterator[None]:
    """Name the flag that fixes an error the layers below raised in their own terms."""
    try:
        yield
    except KvmctlError as err:
        hint = next((h for cls, h in FLAG_HINTS.items() if isinstance(err, cls)), None)
        if hint:
            err.hint = hint
        raise


def print_report(report, as_json: bool, error: BaseException | None) -> None:
    """What ``--json`` chooses: the report's JSON, else its text summary (not after an error, whose
    one line says what happened and where the partial report went)."""
    import json
    import sys

    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    elif error is None:
        from kvmctl.report.textual import render_text

        sys.stdout.write(render_text(report))
