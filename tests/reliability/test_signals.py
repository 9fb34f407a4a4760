"""SIGINT/SIGTERM at random points of `kvmctl experiment`: a partial report, and nothing left behind.

Each case starts a small experiment (--mem 128M --passes 3), waits for one of
its progress lines (the phase), sleeps a random offset into that phase and
sends one signal. It then checks: exit 130 (SIGINT) or 143 (SIGTERM), one
"kvmctl: error: interrupted by ..." line and no traceback, a report at the
output path marked complete=false (the first progress line names that path,
so every signal here comes after it was decided), and the host exactly as
before: no cgroup, VM process, temp file, tracefs instance or BPF program of
the run, our own memcg's limits and the host knobs unchanged.

Offsets are drawn from a seeded generator; set KVMCTL_SIGNAL_SEED to replay
a failing draw (the seed is in every assertion message).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
from tests.helpers.hoststate import (
    HostState,
    assert_nothing_left,
    bpf_prog_ids_of,
    kvmctl_cgroups,
    kvmctl_cmd,
    private_env,
    run_until_line,
    send,
    vm_processes,
    wait_for_line,
)

pytestmark = [pytest.mark.kvm, pytest.mark.root, pytest.mark.slow]

SEED = int(os.environ.get("KVMCTL_SIGNAL_SEED", time.time_ns() % 100_000))
RNG = random.Random(SEED)


@dataclass(frozen=True)
class Case:
    phase: str  # progress line the offset counts from
    low: float  # offset range into the phase, seconds
    high: float
    trace: bool = False
    at_end: bool = False  # the run may have finished first: then it must have finished cleanly

    def draw(self) -> tuple[float, signal.Signals]:
        return RNG.uniform(self.low, self.high), RNG.choice((signal.SIGINT, signal.SIGTERM))


# Phases of a --mode concurrent run with 1 s settle: every pass and the final
# touch phase last a little over a second; the report is written right after
# the final one (offsets near 1 s there hit the end of the run, cleanup and the write).
CASES = (
    [Case("the report goes to", 0.0, 0.6)] * 3  # imports, host probe, cgroup, VM child start
    + [Case("building the VM", 0.0, 0.25)] * 3
    + [Case("populating guest memory", 0.0, 0.4)] * 3
    + [Case("pass 1/3", 0.0, 1.2)] * 3
    + [Case("pass 2/3", 0.0, 1.2)] * 3
    + [Case("pass 3/3", 0.0, 1.2)] * 2
    + [Case("final touch phase", 0.0, 0.9)] * 2
    + [Case("final touch phase", 0.85, 1.15, at_end=True)] * 3  # end of run, cleanup, report writing
    + [Case("compiling and attaching BPF programs", 0.0, 2.5, trace=True),
       Case("pass 2/3", 0.2, 1.0, trace=True),
       Case("final touch phase", 0.5, 1.3, trace=True)]
)
assert len(CASES) >= 20


@pytest.fixture(scope="module")
def host_before() -> HostState:
    return HostState.capture()


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c.phase.split()[0]}{'-bpf' if c.trace else ''}"
                                             for i, c in enumerate(CASES)])
def test_signal_leaves_partial_report_and_clean_host(case: Case, tmp_path, host_before):
    offset, signum = case.draw()
    why = f"seed {SEED}: {signum.name} {offset:.2f}s after {case.phase!r}"
    out = tmp_path / "report.json"
    args = ["experiment", "--mem", "128M", "--passes", "3", "-o", str(out)] + ([] if case.trace else ["--no-trace"])

    def interrupt(proc: subprocess.Popen) -> set[int]:
        time.sleep(offset)
        bpf_ids = bpf_prog_ids_of(proc.pid) if case.trace else set()
        send(proc, signum)
        return bpf_ids

    o = run_until_line(kvmctl_cmd(*args), tmp_path, case.phase, interrupt, why=f"{why}: phase never started: ")
    code = o.returncode
    assert "Traceback" not in o.stderr, f"{why}\n{o.stderr}"
    if code == 0 and case.at_end:  # the signal lost the race with the end of the run
        assert json.loads(out.read_text())["complete"] is True, why
        assert_nothing_left(o, tmp_path, host_before)
        return
    assert code != 0, f"{why}: the run ended before the signal arrived; shorten the offsets"
    assert code == 128 + signum, f"{why}: exit {code}\n{o.stderr}"
    errors = [line for line in o.stderr_lines if line.startswith("kvmctl: error:")]
    assert errors == [f"kvmctl: error: interrupted by {signum.name} (host changes were undone; an experiment "
                      "keeps its report, marked incomplete)"], f"{why}\n{o.stderr}"
    assert out.exists(), f"{why}: no report at {out}\n{o.stderr}"
    report = json.loads(out.read_text())
    assert report["complete"] is False, why
    assert report["incomplete_reason"], why
    assert not list(tmp_path.glob(".report.json.*")), f"{why}: a temporary report file was left"
    assert_nothing_left(o, tmp_path, host_before)


def test_sigkill_of_the_controller_takes_the_vm_child_with_it(tmp_path):
    """SIGKILL allows no cleanup, but the VM must not outlive kvmctl (PR_SET_PDEATHSIG)."""
    proc = subprocess.Popen(kvmctl_cmd("experiment", "--mem", "128M", "--passes", "50", "--no-trace",
                                       "-o", str(tmp_path / "r.json")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=private_env(tmp_path / "tmp"), cwd=tmp_path)
    try:
        seen = wait_for_line(proc.stderr, "pass 2/", time.monotonic() + 90)
        assert "pass 2/" in seen[-1], "".join(seen)
        children = vm_processes(proc.pid)
        assert len(children) == 1, children
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while vm_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vm_processes(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # SIGKILL left the experiment cgroup behind by design; the test made the mess, the test cleans it.
        from kvmctl.cgroup import own_memcg

        parent = own_memcg()
        for name in kvmctl_cgroups(proc.pid, parent):
            deadline = time.monotonic() + 10
            while True:
                try:  # EBUSY until the killed VM child has finished exiting
                    (parent.path / name).rmdir()
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


# Deterministic cases for the two spans a random offset rarely hits: the
# cleanup after the run and the report write. A prelude (run in the kvmctl
# process only) slows each down and announces it; the signal lands inside.
SLOW_WRITE = """
import time, kvmctl.report.files as m
_write = m.write_report
def slow_write(report, path):
    print("[test] writing the report", file=sys.stderr, flush=True)
    time.sleep(1.5)
    return _write(report, path)
m.write_report = slow_write
"""
SLOW_CLEANUP = """
import time, kvmctl.experiment.vmproc as v
_close = v.VmProcess.close
def slow_close(self):
    print("[test] stopping the VM", file=sys.stderr, flush=True)
    time.sleep(1.5)
    return _close(self)
v.VmProcess.close = slow_close
"""


@pytest.mark.parametrize("prelude, marker", [(SLOW_WRITE, "writing the report"), (SLOW_CLEANUP, "stopping the VM")],
                         ids=["during-report-write", "during-cleanup"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_during_cleanup_or_write_finishes_them_and_marks_incomplete(tmp_path, host_before, prelude, marker,
                                                                             signum):
    import sys

    out = tmp_path / "report.json"
    code_text = f"import sys\n{prelude}\nfrom kvmctl.cli import main\nsys.exit(main(sys.argv[1:]))"
    o = run_until_line([sys.executable, "-c", code_text, "experiment", "--mem", "64M", "--passes", "1",
                        "--no-trace", "-o", str(out)], tmp_path, marker, lambda proc: send(proc, signum))
    code = o.returncode
    assert "Traceback" not in o.stderr, o.stderr
    assert code == 128 + signum, o.stderr
    assert [line for line in o.stderr_lines if line.startswith("kvmctl: error:")] == \
        [f"kvmctl: error: interrupted by {signum.name} (host changes were undone; an experiment keeps its report, "
         "marked incomplete)"], o.stderr
    report = json.loads(out.read_text())
    assert report["complete"] is False and "interrupted" in report["incomplete_reason"]
    assert report["passes"], "the run itself had finished: its figures are all there"
    assert not list(tmp_path.glob(".report.json.*"))
    assert_nothing_left(o, tmp_path, host_before)
