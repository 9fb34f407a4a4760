"""Running `kvmctl lab` from the lab tier's tests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

LAB_TIMEOUT_S = 360  # one lab run normally takes 1-2 min on an idle 2-core host
SUMMARY_RE = re.compile(r"kvmctl lab: (\S+) booted in ([\d.]+) s")


def lab(outdir: Path, *command: str, kernel: Path | None = None,
        timeout_s: int = LAB_TIMEOUT_S) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    which = ["--kernel", str(kernel)] if kernel is not None else []
    res = subprocess.run([sys.executable, "-m", "kvmctl", "lab", *which, "--outdir", str(outdir), "--timeout",
                          f"{timeout_s}s", "--", *command], capture_output=True, text=True, timeout=timeout_s + 120)
    m = SUMMARY_RE.search(res.stderr)
    # shown with -rA / on failure: the boot time is a figure worth keeping
    print(f"lab run {' '.join(command)}: rc={res.returncode} wall={time.monotonic() - t0:.1f}s "
          f"boot={m.group(2) if m else '?'}s\n--- stderr ---\n{res.stderr}")
    return res
