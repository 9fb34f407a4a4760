"""guests/mailbox.inc and kvmctl/guest/mailbox.py describe the same protocol."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from kvmctl.guest import mailbox as mb

INC = Path(__file__).resolve().parents[2] / "guests" / "mailbox.inc"
EQU = re.compile(r"^\s*\.equ\s+(\w+)\s*,\s*(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*)?$")


@pytest.fixture(scope="module")
def equ() -> dict[str, int]:
    if not INC.exists():
        pytest.skip(f"{INC} is not there (installed package without the source tree)")
    out = {}
    for line in INC.read_text().splitlines():
        if ".equ" in line:
            m = EQU.match(line)
            assert m, f"unparsed .equ line in mailbox.inc: {line!r}"
            assert m.group(1) not in out, f"{m.group(1)} defined twice"
            out[m.group(1)] = int(m.group(2), 0)
    return out


def _group(equ: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in equ.items() if k.startswith(prefix)}


def test_every_mailbox_field_offset(equ):
    asm = _group(equ, "MB_")
    py = {name.upper(): getattr(mb.Mailbox, name).offset for name, _ in mb.Mailbox._fields_}
    assert asm == py
    for name, ctype in mb.Mailbox._fields_:
        assert ctypes.sizeof(ctype) == 8, f"{name}: every mailbox field is a u64"
    assert ctypes.sizeof(mb.Mailbox) <= 4096  # one page per vCPU


@pytest.mark.parametrize("prefix,enum", [("CMD_", mb.Command), ("PAT_", mb.PatternCode), ("PORT_", mb.Port),
                                         ("ERR_", mb.GuestErrorCode)])
def test_constants(equ, prefix, enum):
    assert _group(equ, prefix) == {m.name: int(m) for m in enum}


def test_magics(equ):
    assert equ["MAILBOX_MAGIC"] == mb.MAILBOX_MAGIC
    assert equ["PAYLOAD_MAGIC"] == mb.PAYLOAD_MAGIC
    assert mb.MAILBOX_MAGIC.to_bytes(8, "little") == b"KMAILBOX"
    assert mb.PAYLOAD_MAGIC.to_bytes(8, "little") == b"KVMCTLPD"


def test_nothing_left_unchecked(equ):
    checked = ("MB_", "CMD_", "PAT_", "PORT_", "ERR_")
    rest = {k for k in equ if not k.startswith(checked)}
    assert rest == {"MAILBOX_MAGIC", "PAYLOAD_MAGIC"}


def test_protocol_values_fit_the_guest():
    assert all(0 < int(p) < 0x10000 for p in mb.Port)  # 16-bit `out dx` ports
    assert len(set(mb.Port)) == len(mb.Port)
    assert mb.SYNC_READY == 0xFFFFFFFF  # what `mov eax, -1; out dx, eax` sends
    assert mb.EXCEPTION_NAMES[6].startswith("#UD") and mb.EXCEPTION_NAMES[14].startswith("#PF")
