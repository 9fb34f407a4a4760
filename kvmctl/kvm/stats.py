"""KVM binary statistics (KVM_GET_STATS_FD), read without a hard-coded list.

The stats fd starts with a header, then an id string, then descriptors
(each a fixed part plus ``name_size`` bytes of name), then the data block.
Only the data block changes, so descriptors are parsed once and each
:meth:`Stats.read` is a single pread.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from kvmctl.kvm import abi
from kvmctl.kvm.fd import FdOwner


@dataclass(frozen=True)
class StatDesc:
    name: str
    type: abi.StatType
    unit: abi.StatUnit
    base: abi.StatBase
    exponent: int
    size: int  # number of u64 values (1 for counters, buckets for histograms)
    offset: int  # byte offset inside the data block
    bucket_size: int

    @property
    def is_histogram(self) -> bool:
        return self.type in (abi.StatType.LINEAR_HIST, abi.StatType.LOG_HIST)


def _enum(kind, value):
    try:
        return kind(value)
    except ValueError:
        return value


def parse_descriptors(blob: bytes, header: abi.kvm_stats_header) -> list[StatDesc]:
    """Parse the descriptor table from the bytes following ``desc_offset``."""
    fixed = ctypes.sizeof(abi.kvm_stats_desc)
    step = fixed + header.name_size
    out = []
    for i in range(header.num_desc):
        raw = blob[i * step : (i + 1) * step]
        d = abi.kvm_stats_desc.from_buffer_copy(raw[:fixed])
        name = raw[fixed:].split(b"\0", 1)[0].decode()
        out.append(
            StatDesc(
                name=name,
                type=_enum(abi.StatType, (d.flags & abi.KVM_STATS_TYPE_MASK) >> abi.KVM_STATS_TYPE_SHIFT),
                unit=_enum(abi.StatUnit, (d.flags & abi.KVM_STATS_UNIT_MASK) >> abi.KVM_STATS_UNIT_SHIFT),
                base=_enum(abi.StatBase, (d.flags & abi.KVM_STATS_BASE_MASK) >> abi.KVM_STATS_BASE_SHIFT),
                exponent=d.exponent,
                size=d.size,
                offset=d.offset,
                bucket_size=d.bucket_size,
            )
        )
    return out


class Stats(FdOwner):
    """An open stats fd of a VM or vCPU."""

    def __init__(self, fd: int):
        self.fd = fd
        hdr_bytes = os.pread(fd, ctypes.sizeof(abi.kvm_stats_header), 0)
        self.header = abi.kvm_stats_header.from_buffer_copy(hdr_bytes)
        h = self.header
        self.id = os.pread(fd, h.name_size, h.id_offset).split(b"\0", 1)[0].decode()
        step = ctypes.sizeof(abi.kvm_stats_desc) + h.name_size
        self.descriptors = parse_descriptors(os.pread(fd, step * h.num_desc, h.desc_offset), h)
        self._data_len = max((d.offset + 8 * d.size for d in self.descriptors), default=0)

    def read(self) -> dict[str, int | list[int]]:
        """Current values: an int per counter, a list per histogram."""
        data = os.pread(self.fd, self._data_len, self.header.data_offset)
        out: dict[str, int | list[int]] = {}
        for d in self.descriptors:
            values = struct.unpack_from(f"<{d.size}Q", data, d.offset)
            out[d.name] = list(values) if d.is_histogram or d.size != 1 else values[0]
        return out
