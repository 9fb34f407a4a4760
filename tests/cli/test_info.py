"""`kvmctl info` end to end: JSON keys, and the facts cross-checked against the host's own files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmctl.probe.tracing import AGING_SYMBOLS, TRACEPOINTS


def run_info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmctl", "info", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def info() -> dict:
    proc = run_info("--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


ITEM_KEYS = {"available", "value", "reason", "remedy", "source"}


def test_json_shape(info):
    assert set(info) >= {"kernel", "mmu", "kvm", "paging", "memory", "bpf", "symbols", "tracepoints",
                         "predicates", "notes", "probe_seconds"}
    assert info["mmu"] in ("tdp", "shadow", "none")
    assert set(info["kvm"]) >= {"module", "device", "api_version", "vm_create", "vm_stats", "capabilities"}
    assert set(info["paging"]) >= {"tdp_mmu", "ept", "npt", "ad_bits", "nested", "lockless_aging"}
    assert set(info["memory"]) >= {"memcg", "swap", "thp", "hugetlb", "mglru", "page_idle", "damon",
                                   "foreign_kdamond"}
    assert set(info["bpf"]) >= {"tracefs", "bpf_syscall", "tracepoint", "bcc", "kernel_headers", "bcc_compile",
                                "btf", "lockdown", "kprobe", "fentry"}
    assert set(info["symbols"]) >= set(AGING_SYMBOLS)
    assert set(info["tracepoints"]) == set(TRACEPOINTS)
    assert set(info["predicates"]) >= {"kvm_usable", "tdp", "bpf_tracepoints", "kprobes", "fentry", "mglru",
                                       "page_idle", "foreign_kdamond"}


def test_every_missing_item_says_why(info):
    def items(tree):
        for value in tree.values():
            if set(value) == ITEM_KEYS:
                yield value
            else:
                yield from items(value)

    for group in ("kvm", "paging", "memory", "bpf", "symbols", "tracepoints", "predicates"):
        for item in items(info[group]):
            if not item["available"]:
                assert item["reason"] and "\n" not in item["reason"], item


def test_facts_match_the_host(info):
    kallsyms = Path("/proc/kallsyms").read_text()
    for name in AGING_SYMBOLS:
        present = any(line.split()[2] == name for line in kallsyms.splitlines() if name in line)
        assert info["symbols"][name]["available"] is present, name

    tdp_param = Path("/sys/module/kvm/parameters/tdp_mmu")
    if tdp_param.exists() and tdp_param.read_text().strip() == "N":
        assert info["mmu"] == "shadow"

    for size_dir in Path("/sys/kernel/mm/hugepages").glob("hugepages-*kB"):
        free = int((size_dir / "free_hugepages").read_text())
        entry = next(v for v in info["memory"]["hugetlb"].values() if v["source"] == str(size_dir))
        assert entry["available"] is (free > 0)

    swap_lines = Path("/proc/swaps").read_text().splitlines()[1:]
    assert info["memory"]["swap"]["available"] is any(int(line.split()[2]) > 0 for line in swap_lines)

    kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert info["kvm"]["device"]["available"] is kvm_ok
    if info["kvm"]["vm_create"]["available"]:
        assert info["kvm"]["api_version"]["value"] == 12
        assert "pages_4k" in info["kvm"]["vm_stats"]["value"] or info["mmu"] == "none"


@pytest.mark.root
def test_tracepoints_match_tracefs(info):
    tracefs = Path(info["bpf"]["tracefs"]["value"])
    for name in TRACEPOINTS:
        system, event = name.split(":")
        assert info["tracepoints"][name]["available"] is (tracefs / "events" / system / event).is_dir(), name


def test_table_output():
    proc = run_info("--no-bpf")
    assert proc.returncode == 0, proc.stderr
    for title in ("KVM", "MMU (", "Memory and agers", "BPF", "Aging symbols", "Tracepoints"):
        assert title in proc.stdout
    assert "kvm_age_gfn" in proc.stdout


def test_bad_flag_is_a_usage_error():
    proc = run_info("--bogus")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


@pytest.mark.root
def test_works_without_root():
    """As an unprivileged user: exit 0, no traceback, and root-only items say they need root."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        usable = subprocess.run([*drop, sys.executable, "-c", "import kvmctl"], capture_output=True,
                                timeout=30).returncode == 0
    except FileNotFoundError:
        pytest.skip("setpriv (util-linux) is not installed")
    if not usable:
        pytest.skip("this checkout or its venv is not readable by the user nobody")
    proc = subprocess.run([*drop, sys.executable, "-m", "kvmctl", "info", "--json"], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    info = json.loads(proc.stdout)
    assert info["kernel"]["root"] is False
    assert info["bpf"]["bpf_syscall"]["available"] is False
    assert "root" in info["bpf"]["bpf_syscall"]["reason"]
    if Path("/dev/kvm").exists():
        # nobody with no groups can use /dev/kvm only through its "other" permission bits
        others_rw = os.stat("/dev/kvm").st_mode & 0o006 == 0o006
        assert info["kvm"]["device"]["available"] is others_rw
