"""`kvmctl run` as a user runs it: a subprocess, its JSON, its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
