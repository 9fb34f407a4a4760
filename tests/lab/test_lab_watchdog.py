"""The lab's no-progress watchdog, run here as the lab runs it: output into files, a real process tree.

A kvmctl-like command (it dumps its Python stacks on kvmctl's signal) starts
a child like the experiment starts its VM child, writes one line and goes
silent: the watchdog must print both processes' threads (state, wchan,
syscall, kernel stack) and their Python stacks, and leave neither behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from kvmctl.lab.watchdog import STALL_EXIT, STALL_FILE

SILENT = textwrap.dedent("""
    import subprocess, sys, time
    from kvmctl.vocab import dump_stacks_on_signal
    dump_stacks_on_signal()
    child = subprocess.Popen([sys.executable, "-c", "from kvmctl.vocab import dump_stacks_on_signal; "
                              "import time; dump_stacks_on_signal(); print('child up', flush=True); time.sleep(600)"])
    open(sys.argv[1], "w").write(f"{child.pid}")
    print("building the VM", file=sys.stderr, flush=True)
    def wait_for_the_vm():
        time.sleep(600)
    wait_for_the_vm()
""")

TALKATIVE = "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.5)\nraise SystemExit(3)\n"


def watched(tmp_path: Path, script: str, stall: float) -> tuple[int, str, str]:
    """Run ``script`` under run_watched in a process whose stdout and stderr are files, as inside the lab."""
    (tmp_path / "cmd.py").write_text(script)
    runner = ("import os, sys; from pathlib import Path; from kvmctl.lab.watchdog import run_watched; "
              f"sys.exit(run_watched([sys.executable, {str(tmp_path / 'cmd.py')!r}, {str(tmp_path / 'pid')!r}], "
              f"dict(os.environ), {stall}, Path({str(tmp_path)!r})))")
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        rc = subprocess.run([sys.executable, "-c", runner], stdout=out, stderr=err, timeout=120,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))).returncode
    return rc, (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


def test_a_silent_command_is_ended_with_the_stacks_of_its_processes(tmp_path):
    rc, out, err = watched(tmp_path, SILENT, stall=2)
    assert rc == STALL_EXIT, err
    report = (tmp_path / STALL_FILE).read_text()
    assert report in err, "the report goes to stderr, which the host shows"
    assert "no progress for 2 s" in report
    child = int((tmp_path / "pid").read_text())
    assert f"process {child}: " in report and "cmd.py" in report
    threads = [line for line in report.splitlines() if line.startswith("  thread ")]
    assert len(threads) >= 2 and all("state " in t and "wchan " in t and "syscall " in t for t in threads), threads
    assert any("clock_nanosleep" in t or "nanosleep" in t for t in threads), threads
    # the Python stacks of both processes, from their own stderr
    assert "in wait_for_the_vm" in err and err.count("most recent call first") >= 2, err
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_command_that_keeps_writing_runs_to_its_end(tmp_path):
    rc, out, err = watched(tmp_path, TALKATIVE, stall=2)
    assert rc == 3 and out.split() == [str(i) for i in range(6)], err
    assert not (tmp_path / STALL_FILE).exists()


def test_a_busy_command_is_not_stalled_though_it_prints_nothing(tmp_path):
    """Like a BCC compile under emulation: minutes of CPU without a line of output."""
    busy = "import time\nend = time.monotonic() + 5\nwhile time.monotonic() < end:\n    pass\nraise SystemExit(0)\n"
    rc, out, err = watched(tmp_path, busy, stall=2)
    assert rc == 0 and not (tmp_path / STALL_FILE).exists(), err
