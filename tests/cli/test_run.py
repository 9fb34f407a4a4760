"""`kvmctl run` as a user runs it: a subprocess, its JSON, its exit codes, rows as epochs end, Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

MIB = 1 << 20


def kvmctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "kvmctl", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def run_json():
    p = kvmctl("run", "--mem", "64M", "--vcpus", "2", "--epochs", "3", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.kvm
def test_run_json_keys_and_values(run_json):
    s = run_json
    pages = 64 * MIB // 4096
    assert s["vcpus"] == 2 and s["mem_bytes"] == 64 * MIB and s["epochs"] == 3
    assert s["pages_touched"] == 3 * pages  # seq write: every page once per epoch
    assert s["distinct_pages_touched"] == pages
    assert len(s["per_epoch"]) == 3
    for e in s["per_epoch"]:
        assert e["pages_touched"] == pages and e["distinct_pages"] == pages
        assert [v["touched"] for v in e["per_vcpu"]] == [pages // 2, pages // 2]
        assert 0 < e["guest_seconds"] <= e["wall_seconds"] * 1.05 + 1e-3
    assert s["guest_seconds"] == pytest.approx(sum(e["guest_seconds"] for e in s["per_epoch"]))
    assert 0 < s["guest_seconds"] < s["wall_seconds"]
    assert s["touch_rate_pages_per_s"] == pytest.approx(s["pages_touched"] / s["guest_seconds"])
    stats = s["vm_stats"]
    assert isinstance(stats, dict) and all(isinstance(k, str) for k in stats)
    # every data page mapped, plus a few system pages (2 MiB mappings only where THP is 'always')
    assert pages <= stats["pages_4k"] + 512 * stats.get("pages_2m", 0)
    if not stats.get("pages_2m"):
        assert stats["pages_4k"] <= pages + 64
    assert [m["size"] for m in s["memslots"]] == [64 * MIB]


@pytest.mark.kvm
def test_run_text_output():
    p = kvmctl("run", "--mem", "8M", "--epochs", "2", "--pattern", "stride:4", "--access", "read", "--quiet")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("1 vCPU(s), 8M anon in 1 memslot(s), pattern stride:4 (read)")
    assert any(line.startswith("total: 1024 touches (512 distinct pages)") for line in lines)
    assert lines[-1].startswith("vm stats: pages_4k=")
    assert p.stderr == ""


@pytest.mark.kvm
def test_run_duration():
    p = kvmctl("run", "--mem", "8M", "--duration", "300ms", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["epochs"] >= 1 and s["wall_seconds"] >= 0.3


BAD = {  # arguments -> expected exit code (2 usage, 3 host lacks it)
    "--mem 0": 2, "--mem -1": 2, "--mem 3M": 2, "--mem 1.5": 2, "--mem lots": 2,
    "--vcpus 0": 2, "--vcpus 100000": 2, "--vcpus x": 2,
    "--pattern bogus": 2, "--pattern stride:0": 2, "--pattern random:0": 2, "--pattern hotcold:2": 2,
    "--backing nope": 2, "--memslots 0": 2, "--memslots 3 --mem 4M": 2,
    "--epochs 0": 2, "--duration 0s": 2, "--epoch-timeout never": 2, "--guest-page 8K": 2,
    "--backing-path /nonexistent/x": 2, "--access both": 2, "--no-such-flag": 2,
}


@pytest.mark.parametrize("args", BAD, ids=BAD)
def test_bad_input_gives_one_line_and_exit_code(args):
    p = kvmctl("run", *args.split(), "--json")
    assert p.returncode == BAD[args], (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmctl: error: "), p.stderr
    assert p.stdout == ""


@pytest.mark.kvm
@pytest.mark.parametrize("kind", ["hugetlb", "hugetlb1g"])
def test_hugetlb_without_pages_is_unsupported(kind):
    page = "2048kB" if kind == "hugetlb" else "1048576kB"
    try:
        reserved = int(open(f"/sys/kernel/mm/hugepages/hugepages-{page}/nr_hugepages").read())
    except OSError:
        reserved = 0
    if reserved:
        pytest.skip(f"{kind} pages are reserved here, so this host cannot show the error")
    p = kvmctl("run", "--mem", "1G", "--backing", kind)
    assert p.returncode == 3, p.stderr
    assert p.stderr.startswith("kvmctl: error: ") and "no pages are reserved" in p.stderr
    assert "nr_hugepages" in p.stderr and len(p.stderr.splitlines()) == 1


def _start(*args: str, **kw) -> subprocess.Popen:
    """A run whose stdout is a pipe, buffered as Python buffers a pipe (no PYTHONUNBUFFERED)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen([sys.executable, "-m", "kvmctl", "run", *args], stdout=subprocess.PIPE, text=True,
                            env=env, **kw)


ROW = re.compile(r" *\d+ +\d+ +\d+ +[\d.]+ +[\d.]+ +[\d.]+")  # epoch, pages, distinct, guest ms, wall ms, rate


def _readline(proc: subprocess.Popen) -> str:
    """One line of stdout, a byte at a time: a buffered readline would take later rows along with it,
    which communicate() (reading the pipe's descriptor) then never sees."""
    fd, buf = proc.stdout.fileno(), bytearray()
    while not buf.endswith(b"\n") and (byte := os.read(fd, 1)):
        buf += byte
    return buf.decode()


def _first_row(proc: subprocess.Popen) -> str:
    """Lines up to the first epoch row, read while the run goes on."""
    for _ in range(3):
        line = _readline(proc)
        if ROW.fullmatch(line.rstrip("\n")):
            return line
    raise AssertionError(f"no epoch row in the first lines (last: {line!r})")


def _interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return out, err


@pytest.mark.kvm
def test_rows_reach_a_pipe_as_epochs_end_and_ctrl_c_keeps_them():
    proc = _start("--mem", "64M", "--duration", "120s", stderr=subprocess.PIPE)
    try:
        first = _first_row(proc)
        assert proc.poll() is None  # the row came while the run was still going
        time.sleep(0.5)
        out, err = _interrupt(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    rows = [first] + [line for line in out.splitlines() if ROW.fullmatch(line)]
    n = len(rows)
    assert [int(r.split()[0]) for r in rows] == list(range(n))  # every epoch measured, in order, none lost
    assert f"interrupted by SIGINT after {n} epoch(s): the totals cover the {n} epoch(s) above" in out
    assert f"total: {n * 16384} touches (16384 distinct pages)" in out
    assert out.splitlines()[-1].startswith("vm stats: pages_4k=")
    (line,) = [x for x in err.splitlines() if x.startswith("kvmctl: ")]
    assert line.startswith("kvmctl: error: interrupted by SIGINT")
    assert f"the {n} epoch(s) measured before it are printed, with totals over them" in line
    assert "an experiment keeps its report" not in line and "Traceback" not in err


@pytest.mark.kvm
def test_ctrl_c_with_json_prints_the_measured_epochs_marked_incomplete():
    proc = _start("--mem", "64M", "--duration", "120s", "--json", "--quiet", stderr=subprocess.PIPE)
    try:
        time.sleep(3)
        out, err = _interrupt(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    s = json.loads(out)
    assert s["complete"] is False and s["incomplete_reason"] == f"interrupted by SIGINT after {s['epochs']} epoch(s)"
    assert s["epochs"] == len(s["per_epoch"]) >= 1
    assert s["pages_touched"] == 16384 * s["epochs"]
    assert f"the JSON printed covers the {s['epochs']} epoch(s) measured before it" in err


@pytest.mark.kvm
def test_duration_progress_counts_down_on_a_plain_stderr():
    p = subprocess.run([sys.executable, "-m", "kvmctl", "run", "--mem", "8M", "--duration", "5s", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) >= 1, p.stderr  # one line at most every 2 s
    parsed = [re.fullmatch(r"kvmctl run: (\d+) epochs?, ([\d.]+) s elapsed, ([\d.]+) s left", x) for x in lines]
    assert all(parsed), lines
    for m in parsed:
        assert float(m[2]) + float(m[3]) == pytest.approx(5.0, abs=0.11)  # the rest of --duration
    assert json.loads(p.stdout)["complete"] is True


@pytest.mark.kvm
def test_progress_bar_on_a_terminal_leaves_piped_rows_alone(tmp_path):
    main, tty = pty.openpty()
    with open(tmp_path / "rows", "w") as rows:  # a file, not a pipe nobody reads while the terminal is read
        proc = subprocess.Popen([sys.executable, "-m", "kvmctl", "run", "--mem", "8M", "--duration", "3s"],
                                stdout=rows, stderr=tty, text=True)
    os.close(tty)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the run closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(main)
    assert proc.returncode == 0
    out = (tmp_path / "rows").read_text()
    screen = shown.decode(errors="replace")
    assert "kvmctl run" in screen and "━" in screen  # rich's bar
    assert re.search(r"\d+ epochs?, [\d.]+ s elapsed, [\d.]+ s left", screen)
    assert "Mpages/s" not in screen  # the rows went to the pipe, not into the bar
    assert out.splitlines()[1].split()[0] == "epoch" and out.splitlines()[-1].startswith("vm stats:")
