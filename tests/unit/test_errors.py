"""The error hierarchy: one line, a hint, a documented exit code."""

from __future__ import annotations

import errno
import signal

import pytest

from kvmctl import errors
from kvmctl.errors import (
    ExitCode, GuestError, Interrupted, KvmctlError, KvmIoctlError, PermissionDeniedError, UnsupportedError, UsageError,
)  # fmt: skip


@pytest.mark.parametrize("cls,code", [(KvmctlError, 1), (UsageError, 2), (UnsupportedError, 3), (GuestError, 4),
                                      (PermissionDeniedError, 5)])
def test_exit_codes(cls, code):
    err = cls("something is wrong", "do this")
    assert isinstance(err, KvmctlError) and err.exit_code == code
    assert err.one_line() == "something is wrong (do this)"


def test_exit_codes_are_distinct_and_documented():
    values = [int(c) for c in ExitCode]
    assert len(values) == len(set(values))
    assert ExitCode.INTERRUPTED == 128 + signal.SIGINT and ExitCode.TERMINATED == 128 + signal.SIGTERM


def test_one_line_collapses_whitespace_and_trailing_period():
    err = UsageError("bad\n  value.", "fix\tit")
    line = err.one_line()
    assert "\n" not in line and "\t" not in line
    assert line == "bad value (fix it)"
    assert KvmctlError("no hint.").one_line() == "no hint"


def test_kvm_ioctl_error():
    err = KvmIoctlError("KVM_RUN", errno.EBADF, "reopen the VM")
    assert err.ioctl == "KVM_RUN" and err.errno == errno.EBADF and err.exit_code == ExitCode.FAILURE
    assert err.message == "KVM ioctl KVM_RUN failed: Bad file descriptor (errno 9)"
    assert err.one_line().endswith("(reopen the VM)")


def test_guest_error_carries_registers():
    assert GuestError("x").registers == {}
    regs = {"rip": 0x10000, "cpl": 3}
    assert GuestError("x", "y", registers=regs).registers == regs


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted(sig, code):
    err = Interrupted(sig)
    assert err.exit_code == code and err.signum == sig
    assert signal.Signals(sig).name in err.message and err.hint


def test_every_error_class_is_a_kvmctl_error():
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert set(classes) >= {KvmctlError, UsageError, UnsupportedError, PermissionDeniedError, KvmIoctlError,
                            GuestError, Interrupted}
    assert all(issubclass(c, KvmctlError) for c in classes)
