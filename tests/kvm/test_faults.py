"""Guest faults end in a typed GuestError with registers, and the VM is torn down.

The `faults` payload (guests/faults.S) misbehaves on purpose; arg0 picks how.
"""

from __future__ import annotations

import threading
import time

import pytest

from kvmctl.errors import ExitCode, GuestError
from kvmctl.guest import longmode as lm
from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.payload import Payload
from kvmctl.kvm import exits
from tests.helpers.fds import kvm_fds

pytestmark = pytest.mark.kvm

MIB = 1 << 20
UD2, MMIO, PAGE_FAULT, SPIN, HLT = range(5)
UNMAPPED = 0x2_0000_0000  # 8 GiB: above the data area, so no page-table entry maps it
PF_USER = 0x4  # #PF error code: user mode, read, page not present
RESET_RIP = 0xFFF0


def payload_code_range() -> range:
    return range(lm.CODE_GPA, lm.CODE_GPA + len(Payload.load("faults").image))


def vcpu_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kvmctl-vcpu")]


@pytest.fixture
def torn_down():
    """After the test: no KVM fd and no vCPU thread of ours is left."""
    before = kvm_fds()
    yield
    assert kvm_fds() == before, "a KVM fd outlived the faulting VM"
    assert vcpu_threads() == []


def fault(arg0: int, arg1: int = 0, cpl: int = 3, vcpus: int = 1, timeout: float = 30) -> GuestError:
    spec = MachineSpec(2 * MIB, vcpus, payload="faults", cpl=cpl, mmio_hole=2 * MIB)
    with pytest.raises(GuestError) as info:
        with GuestMachine(spec, epoch_timeout=timeout) as m:
            m.run_payload(arg0, m.mmio_gpa + arg1 if arg0 == MMIO else arg1)
    err = info.value
    assert err.exit_code == ExitCode.GUEST_FAULT and err.hint
    assert {"rip", "rsp", "rflags", "cr3", "cpl"} <= set(err.registers), err.registers
    return err


def test_invalid_opcode(torn_down):
    err = fault(UD2)
    assert "#UD" in err.message
    rip = err.registers["fault_rip"]
    assert rip in payload_code_range()
    assert f"rip {rip:#x}" in err.message


@pytest.mark.parametrize("cpl", [3, 0])
def test_unbacked_gpa_is_an_mmio_exit(torn_down, cpl):
    err = fault(MMIO, arg1=0x1238, cpl=cpl)
    addr = lm.GIB * 4 + 2 * MIB + 0x1238  # the MMIO hole follows the 2 MiB data area at 4 GiB
    assert f"read from unbacked guest-physical address {addr:#x}" in err.message
    assert err.registers["rbx"] == addr and err.registers["cpl"] == cpl
    assert err.registers["rip"] in payload_code_range()


def test_page_fault_on_unmapped_address(torn_down):
    err = fault(PAGE_FAULT, arg1=UNMAPPED)
    assert "#PF" in err.message and f"at address {UNMAPPED:#x}" in err.message
    assert err.registers["fault_cr2"] == UNMAPPED
    assert err.registers["fault_error"] == PF_USER
    assert err.registers["fault_rip"] in payload_code_range()


def test_spinning_guest_hits_the_watchdog(torn_down):
    t0 = time.monotonic()
    err = fault(SPIN, vcpus=2, timeout=0.5)
    assert time.monotonic() - t0 < 5, "the watchdog must bound a silent guest"
    assert "stopped reporting" in err.message and "[0, 1]" in err.message
    assert err.registers["rip"] in payload_code_range() and err.registers["cpl"] == 3


def test_hlt_at_cpl3_is_a_general_protection_fault(torn_down):
    err = fault(HLT)
    assert "#GP" in err.message
    assert err.registers["fault_rip"] in payload_code_range()


def test_hlt_at_cpl0_is_an_hlt_exit(torn_down):
    err = fault(HLT, cpl=0)
    assert "ended with hlt" in err.message and err.registers["cpl"] == 0
    # and the exit itself is typed: drive the vCPU directly
    with GuestMachine(MachineSpec(2 * MIB, 1, payload="faults", cpl=0)) as m:
        m.mailboxes[0].arg0 = HLT
        vcpu = m.vm.vcpus[0]
        ex = vcpu.run()
        while isinstance(ex, exits.Interrupted):
            ex = vcpu.run()
        assert isinstance(ex, exits.Hlt)
        assert vcpu.get_regs().rip in payload_code_range()


def test_broken_idt_triple_faults(torn_down):
    """No usable IDT: #UD -> #GP -> #DF -> triple fault, a KVM_EXIT_SHUTDOWN."""
    with pytest.raises(GuestError) as info:
        with GuestMachine(MachineSpec(2 * MIB, 1, payload="faults")) as m:
            vcpu = m.vm.vcpus[0]
            sregs = vcpu.get_sregs()
            sregs.idt.limit = 0
            vcpu.set_sregs(sregs)
            m.run_payload(UD2)
    assert "triple fault" in info.value.message
    # VMX keeps the faulting state; SVM resets the vCPU on shutdown (rip = the reset vector 0xfff0)
    rip = info.value.registers["rip"]
    assert rip in payload_code_range() or rip == RESET_RIP, hex(rip)


def test_machine_is_usable_after_a_fault_elsewhere(torn_down):
    """A fault tears down its own VM only; the next VM runs normally."""
    fault(UD2)
    with GuestMachine(MachineSpec(2 * MIB, 1, payload="pingpong"), epoch_timeout=30) as m:
        m.run_payload(100)
        assert m.ping_exits == 100
