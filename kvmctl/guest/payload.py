"""Loading the flat payload binaries that ship in kvmctl/guest/bin/."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from importlib import resources

from kvmctl.errors import KvmctlError, UsageError
from kvmctl.guest.mailbox import PAYLOAD_MAGIC

PAYLOADS = ("touch", "pingpong", "faults", "nested_svm")


@dataclass(frozen=True)
class Payload:
    name: str
    image: bytes
    entry_offset: int
    stubs_offset: int  # 32 exception stubs, 16 bytes apart

    @classmethod
    def load(cls, name: str) -> "Payload":
        if name not in PAYLOADS:
            raise UsageError(f"unknown payload {name!r}", f"use one of {', '.join(PAYLOADS)}")
        try:
            image = resources.files("kvmctl.guest").joinpath("bin", f"{name}.bin").read_bytes()
        except FileNotFoundError:
            raise KvmctlError(f"payload binary {name}.bin is missing from the package",
                              "rebuild with `make -C guests` and reinstall") from None
        magic, entry, stubs, _version = struct.unpack_from("<4Q", image, 0)
        if magic != PAYLOAD_MAGIC:
            raise KvmctlError(f"payload {name}.bin has no kvmctl header", "rebuild with `make -C guests`")
        return cls(name, image, entry, stubs)
