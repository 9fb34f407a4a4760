"""Guest faults end to end: `kvmctl experiment` exits 4 with the registers in the report, VM torn down.

KVMCTL_TEST_PAYLOAD=faults:<mode> (a test hook of kvmctl.experiment.vmchild,
documented in docs/reliability.md) makes the experiment's VM run the faults
payload: #UD, a read of unbacked guest-physical memory (MMIO exit), a #PF on
an unmapped address, a triple fault (no usable IDT) and a guest that never
reports back (the watchdog, --epoch-timeout). tests/kvm/test_faults.py covers
the same faults at the GuestMachine level.
"""

from __future__ import annotations

import json

import pytest

from kvmctl.errors import ExitCode
from tests.helpers.hoststate import HostState, assert_nothing_left, assert_one_line_error, private_env, run_kvmctl

pytestmark = [pytest.mark.kvm, pytest.mark.root]


@pytest.fixture(scope="module")
def host_before() -> HostState:
    return HostState.capture()


@pytest.mark.parametrize("mode, phrases", [
    ("ud", ("#UD invalid opcode",)),
    ("mmio", ("read from unbacked guest-physical address",)),
    ("pf", ("#PF page fault", "at address 0x200000000")),
    ("triple", ("triple fault",)),
    ("spin", ("stopped reporting", "within 1s")),
])
def test_guest_fault_is_a_typed_error_with_registers(tmp_path, host_before, mode, phrases):
    out = tmp_path / "r.json"
    env = private_env(tmp_path / "tmp", KVMCTL_TEST_PAYLOAD=f"faults:{mode}")
    o = run_kvmctl(["experiment", "--mem", "64M", "--no-trace", "--epoch-timeout", "1s", "-o", str(out)], tmp_path,
                   env=env, timeout=60)
    line = assert_one_line_error(o, ExitCode.GUEST_FAULT, *phrases)
    report = json.loads(out.read_text())
    assert report["complete"] is False
    fault = report["guest_fault"]
    assert fault and fault["message"] in line
    regs = fault["registers"]
    assert {"rip", "rsp", "rflags", "cr3", "cpl"} <= set(regs), regs
    assert regs["rip"] > 0 and regs["cr3"] > 0
    assert_nothing_left(o, tmp_path, host_before)


def test_unknown_test_payload_is_a_usage_error(tmp_path):
    env = private_env(tmp_path / "tmp", KVMCTL_TEST_PAYLOAD="faults:bogus")
    o = run_kvmctl(["experiment", "--mem", "64M", "--no-trace", "-o", str(tmp_path / "r.json")], tmp_path, env=env)
    assert_one_line_error(o, ExitCode.USAGE, "KVMCTL_TEST_PAYLOAD", "faults:ud")
    assert_nothing_left(o, tmp_path)
