"""Passive: change nothing, only mark a pass window.

The host ages guest memory anyway (kswapd, a foreign kdamond, khugepaged...).
A passive pass records the window so that the tracer's counts for it measure
that background alone. Option ``pass_s``: how long a pass lasts (default 0,
an instant marker between epochs).
"""

from __future__ import annotations

import time

from kvmctl.agers.base import Ager, Availability, Option, PassRecord, seconds
from kvmctl.errors import UsageError


class PassiveAger(Ager):
    name = "passive"
    summary = "no aging of our own: observe what the host does anyway"
    options = (Option("pass_s", "seconds a pass lasts; default 0, an instant marker between epochs", seconds),)

    def availability(self) -> Availability:
        return Availability(True, "needs nothing from the host")

    def _run_pass(self, record: PassRecord) -> None:
        seconds = float(self._option("pass_s", 0.0))
        if seconds < 0:
            raise UsageError(f"pass_s must not be negative, got {seconds}", "give a duration like 1.0")
        record.thread_ids.clear()  # nothing in this pass ages on our behalf
        if seconds:
            time.sleep(seconds)
