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
