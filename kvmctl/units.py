"""Sizes and durations: the page sizes every layer shares, and parsing what users type.

kvmctl runs on x86-64 hosts: a base page is 4 KiB, a huge page 2 MiB or 1 GiB.
Guest pages, host pages, gfns and the per-page arrays of the tracer, the
agers and the report all use these.
"""

from __future__ import annotations

import re

from kvmctl.errors import UsageError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HUGE_2M = 2 << 20
HUGE_1G = 1 << 30

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*$")
_DUR_MULT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(text: str | int, what: str = "size") -> int:
    """'1G', '512M', '4096', '2MiB' -> bytes (binary multiples)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"{what} {text!r} is not a size", "write it like 512M, 1G or 4096")
        value = float(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
        if value != int(value):
            raise UsageError(f"{what} {text!r} is not a whole number of bytes", "use a whole number like 512M")
        value = int(value)
    if value <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}", "give a size like 512M")
    return value


def parse_duration(text: str | float, what: str = "duration") -> float:
    """'5s', '250ms', '2m', '10' -> seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DUR_RE.match(str(text))
        if not m:
            raise UsageError(f"{what} {text!r} is not a duration", "write it like 5s, 250ms or 2m")
        value = float(m.group(1)) * _DUR_MULT[m.group(2)]
    if value <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}", "give a duration like 5s")
    return value


def format_size(n: int) -> str:
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def format_bytes(n: float) -> str:
    """A size for people: '289.4 MiB', '4.0 KiB', '512 B'."""
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= mult:
            return f"{n / mult:.1f} {unit}"
    return f"{n:.0f} B"
