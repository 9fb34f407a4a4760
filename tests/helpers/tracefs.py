"""A private tracefs instance: an independent count of tracepoint events.

ftrace's own ring buffer, in an instance of ours (instances/kvmctl-<pid>-<tag>),
with the mono clock (the clock of bpf_ktime_get_ns and time.monotonic_ns).
Only the events we enable there are recorded; the instance is removed on
exit, also when the test fails.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LINE_RE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<sec>\d+)\.(?P<usec>\d{6}):\s+"
    r"(?P<event>\w+):\s+(?P<text>.*)$"
)
_ENTRIES_RE = re.compile(r"entries-in-buffer/entries-written:\s+(\d+)/(\d+)")


@dataclass(frozen=True)
class TraceLine:
    ts_ns: int  # microsecond resolution: the true time is in [ts_ns, ts_ns + 999]
    comm: str
    pid: int  # the thread id (common_pid)
    event: str
    text: str


class TracefsInstance:
    def __init__(self, tracefs: Path, events: dict[str, str | None], buffer_kb: int = 16384):
        """``events``: "system:event" -> ftrace filter expression (or None)."""
        self.path = tracefs / "instances" / f"kvmctl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events = events
        self.buffer_kb = buffer_kb
        self.entries: tuple[int, int] | None = None

    def __enter__(self) -> TracefsInstance:
        self.path.mkdir()
        try:
            (self.path / "trace_clock").write_text("mono")
            (self.path / "buffer_size_kb").write_text(str(self.buffer_kb))
            for name, flt in self.events.items():
                ev = self.path / "events" / name.replace(":", "/")
                if flt:
                    (ev / "filter").write_text(flt)
                (ev / "enable").write_text("1")
        except BaseException:
            self._remove()
            raise
        return self

    def disable(self) -> None:
        for name in self.events:
            (self.path / "events" / name.replace(":", "/") / "enable").write_text("0")

    def lines(self) -> list[TraceLine]:
        """Recorded events (after disable()); sets ``entries`` (in buffer, written)."""
        out = []
        with (self.path / "trace").open() as f:
            for raw in f:
                if raw.startswith("#"):
                    m = _ENTRIES_RE.search(raw)
                    if m:
                        self.entries = (int(m.group(1)), int(m.group(2)))
                    continue
                m = _LINE_RE.match(raw)
                if m:
                    ts = int(m["sec"]) * 1_000_000_000 + int(m["usec"]) * 1000
                    out.append(TraceLine(ts, m["comm"].strip(), int(m["pid"]), m["event"], m["text"]))
        return out

    @property
    def dropped(self) -> int:
        if self.entries is None:
            return 0
        return self.entries[1] - self.entries[0]

    def _remove(self) -> None:
        for name in self.events:
            try:
                (self.path / "events" / name.replace(":", "/") / "enable").write_text("0")
            except OSError:
                pass
        for _ in range(50):  # rmdir is EBUSY while a reader holds the buffer open
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()

    def __exit__(self, *exc) -> None:
        self._remove()


class PipeCounter:
    """Events of a TracefsInstance drained from its trace_pipe while they happen, counted afterwards.

    For event rates a ring buffer cannot hold for the whole run (a kdamond
    ages ~10^5 pages/s): ``cat`` consumes trace_pipe into a file as events
    arrive (Python alone falls behind), and the lines are counted per
    microsecond once it stopped. ``overrun`` is what the ring buffer lost
    before it was read (per_cpu/*/stats).
    """

    def __init__(self, inst: TracefsInstance, spool: Path):
        import subprocess

        self.inst = inst
        self.spool = spool
        self._out = spool.open("wb")
        self._cat = subprocess.Popen(["cat", str(inst.path / "trace_pipe")], stdout=self._out,
                                     stdin=subprocess.DEVNULL)
        self._stamps: dict[str, np.ndarray] = {}

    def __enter__(self) -> PipeCounter:
        return self

    def stop(self) -> None:
        """After inst.disable(): let cat drain what is left, then end it (by its PID)."""
        time.sleep(0.5)
        if self._cat.poll() is None:
            self._cat.terminate()
            self._cat.wait(10)
        self._out.close()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def overrun(self) -> int:
        total = 0
        for stats in (self.inst.path / "per_cpu").glob("cpu*/stats"):
            m = re.search(r"^overrun: (\d+)", stats.read_text(), re.M)
            total += int(m[1]) if m else 0
        return total

    def timestamps(self, event: str) -> np.ndarray:
        """Timestamps (us, sorted) of ``event``'s lines."""
        if event not in self._stamps:
            pattern = re.compile(rb"\s(\d+\.\d{6}): " + re.escape(event.encode()) + rb":")
            found = pattern.findall(self.spool.read_bytes())
            us = np.rint(np.array(found, dtype="S24").astype(np.float64) * 1e6).astype(np.int64)
            self._stamps[event] = np.sort(us)
        return self._stamps[event]

    def between(self, events: set[str], start_ns: int, end_ns: int) -> tuple[int, int]:
        """(events certainly inside [start_ns, end_ns), events in the edge microseconds)."""
        inside = edge = 0
        lo, hi = start_ns // 1000, end_ns // 1000
        for event in events:
            us = self.timestamps(event)
            inside += int(np.searchsorted(us, hi, "left") - np.searchsorted(us, lo, "right"))
            edge += int(np.count_nonzero((us == lo) | (us == hi)))
        return inside, edge
