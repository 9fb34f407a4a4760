"""QEMU's monitor (QMP) over its local unix socket: what QEMU knows of its RAM, vCPUs and KVM stats.

Only queries are sent: ``query-memdev``, ``query-cpus-fast``, ``query-stats``
and two read-only HMP commands (``info mtree -f``, ``gpa2hva``). The client
is QEMU's own ``qemu.qmp`` package; the socket is opened here so that its
peer can be checked (SO_PEERCRED) to be the watched process before anything
is said, and every exchange has a timeout (a monitor another client holds
never answers).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

from kvmctl.errors import KvmctlError, PermissionDeniedError, UsageError
from kvmctl.kvm.memslot import Memslot

SOURCE_QMP = "qmp"
TIMEOUT_S = 5.0
_SEGMENT_RE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ram\): (\S+)(?: @([0-9a-f]+))?")
_HVA_RE = re.compile(r"is (0x[0-9a-f]+)")

logging.getLogger("qemu.qmp").addHandler(logging.NullHandler())
logging.getLogger("qemu.qmp").propagate = False  # its warnings would break our one-line errors


@dataclass(frozen=True)
class RamSegment:
    """A guest-physical range of the "memory" address space that is RAM block ``name`` from ``offset`` on."""

    gpa_start: int
    gpa_end: int  # exclusive
    name: str
    offset: int


def parse_flat_ram(mtree: str) -> list[RamSegment]:
    """The RAM segments of the system memory's flat view (``info mtree -f``)."""
    for view in mtree.split("FlatView #")[1:]:
        if 'AS "memory"' not in view:
            continue
        out = []
        for line in view.splitlines():
            if m := _SEGMENT_RE.match(line):
                out.append(RamSegment(int(m[1], 16), int(m[2], 16) + 1, m[3], int(m[4] or "0", 16)))
        return out
    return []


def parse_gpa2hva(text: str) -> int | None:
    m = _HVA_RE.search(text)
    return int(m[1], 16) if m else None


def ram_memslots(memdevs: list[dict[str, Any]], segments: list[RamSegment],
                 hva_of: dict[int, int], backing: dict[str, tuple[str, str | None]]) -> list[Memslot]:
    """One memslot per memory backend that the flat view maps, placed by ``hva_of`` (gpa -> hva).

    The guest-physical start is where the block's offset 0 appears, when a
    segment maps it; the board may split a block around holes (or above
    4 GiB), so a block is one host range but not one guest-physical range.
    """
    out = []
    for dev in memdevs:
        name, size = dev["id"], int(dev["size"])
        segs = [s for s in segments if s.name == name]
        placed = next((s for s in segs if s.gpa_start in hva_of), None)
        if placed is None:
            continue
        hva = hva_of[placed.gpa_start] - placed.offset
        gpa = next((s.gpa_start for s in segs if s.offset == 0), None)
        kind, path = backing.get(name, ("anon", None))
        out.append(Memslot.host_range(hva, size, kind, SOURCE_QMP, path, gpa))
    return sorted(out, key=lambda m: m.hva_start)


def sum_stats(answer: list[dict[str, Any]]) -> dict[str, int | list[int]]:
    """A query-stats answer (one entry per provider and object) -> name -> value, summed over the objects.

    Histograms add bucket by bucket; a boolean gauge (blocking, guest_mode) counts the objects where it holds.
    """
    out: dict[str, int | list[int]] = {}
    for obj in answer:
        for stat in obj.get("stats", []):
            name, value = stat["name"], stat["value"]
            if isinstance(value, list):
                prev = out.get(name, [])
                n = max(len(prev), len(value))
                out[name] = [(prev[i] if i < len(prev) else 0) + (int(value[i]) if i < len(value) else 0)
                             for i in range(n)]
            else:
                out[name] = int(out.get(name, 0)) + int(value)
    return out


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


class Qmp:
    """A QMP session with the watched QEMU; close() it."""

    def __init__(self, path: str, pid: int, timeout: float = TIMEOUT_S):
        try:
            from qemu.qmp import QMPClient  # noqa: PLC0415 - only a watch with --qmp needs it
        except ImportError:
            raise KvmctlError("the qemu.qmp package is not installed", "run scripts/setup.sh") from None
        self.path, self.timeout = path, timeout
        sock = _connect(path, timeout)
        owner = peer_pid(sock)
        if owner != pid:
            sock.close()
            raise UsageError(f"QMP socket {path} belongs to process {owner}, not {pid}",
                             f"give the -qmp socket of process {pid}")
        sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("kvmctl-watch")
        try:
            self._run(self._client.connect(sock), "connect")
        except BaseException:
            self.close()
            raise

    def _run(self, coro, what: str):
        from qemu.qmp import QMPError  # noqa: PLC0415

        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except asyncio.TimeoutError:
            raise KvmctlError(f"QMP {what} on {self.path} got no answer in {self.timeout:g} s",
                              "is another client holding the monitor? give a free QMP socket") from None
        except (QMPError, OSError, EOFError) as err:
            raise KvmctlError(f"QMP {what} on {self.path} failed: {err}", "check that QEMU is still running") from None

    def cmd(self, name: str, **args: Any) -> Any:
        return self._run(self._client.execute(name, args or None), name)

    def hmp(self, line: str) -> str:
        return str(self.cmd("human-monitor-command", **{"command-line": line}))

    def memslots(self) -> list[Memslot]:
        memdevs = self.cmd("query-memdev")
        segments = parse_flat_ram(self.hmp("info mtree -f"))
        hva_of = {}
        for name in {d["id"] for d in memdevs}:
            seg = next((s for s in segments if s.name == name), None)
            if seg is not None and (hva := parse_gpa2hva(self.hmp(f"gpa2hva {seg.gpa_start:#x}"))) is not None:
                hva_of[seg.gpa_start] = hva
        return ram_memslots(memdevs, segments, hva_of, {})

    def vcpu_tids(self) -> dict[int, int]:
        return {int(c["cpu-index"]): int(c["thread-id"]) for c in self.cmd("query-cpus-fast")}

    def vm_stats(self) -> dict[str, int | list[int]]:
        """KVM's VM-wide stats (query-stats target vm): name -> value."""
        return sum_stats(self.cmd("query-stats", target="vm"))

    def vcpu_stats(self) -> dict[str, int | list[int]]:
        """KVM's per-vCPU stats (query-stats target vcpu), summed over the vCPUs: name -> value."""
        return sum_stats(self.cmd("query-stats", target="vcpu"))

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        try:
            if client is not None:
                loop.run_until_complete(asyncio.wait_for(client.disconnect(), self.timeout))
        except Exception:  # noqa: BLE001 - closing a session that is already broken
            pass
        finally:
            loop.close()


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise UsageError(f"QMP socket {path} does not exist",
                         "give the path of QEMU's -qmp unix:PATH,server=on") from None
    except PermissionError:
        sock.close()
        raise PermissionDeniedError(f"cannot connect to QMP socket {path}: permission denied",
                                    "run kvmctl watch as root (sudo)") from None
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot connect to QMP socket {path}: {err.strerror}",
                         "give the socket of a running QEMU's -qmp unix:PATH,server=on") from None
    return sock
