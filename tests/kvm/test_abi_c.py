"""kvmctl/kvm/abi.py against the system's <linux/kvm.h>, compiled with gcc.

The checks are generated from the Python side (every structure, field,
ioctl number and constant abi.py defines), so a new definition there is
checked without touching this file. Items newer than the oldest header we
support are wrapped in #ifdef and become skipped sub-checks when the
header predates them; everything else must be in the header.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmctl.kvm import abi

# Added to the uAPI after Linux 6.1 (guest_memfd, memory region v2: 6.8).
NEWER_MACROS = {"KVM_CAP_USER_MEMORY2", "KVM_CAP_GUEST_MEMFD", "KVM_SET_USER_MEMORY_REGION2",
                "KVM_CREATE_GUEST_MEMFD", "KVM_MEM_GUEST_MEMFD"}
# A structure newer than 6.1 is present when the ioctl that carries it is.
NEWER_STRUCTS = {"kvm_userspace_memory_region2": "KVM_SET_USER_MEMORY_REGION2",
                 "kvm_create_guest_memfd": "KVM_CREATE_GUEST_MEMFD"}
# Python enum -> (C macro prefix, shift macro the C value carries, if any)
ENUMS = {abi.Cap: ("KVM_CAP_", None), abi.ExitReason: ("KVM_EXIT_", None),
         abi.StatType: ("KVM_STATS_TYPE_", "KVM_STATS_TYPE_SHIFT"),
         abi.StatUnit: ("KVM_STATS_UNIT_", "KVM_STATS_UNIT_SHIFT"),
         abi.StatBase: ("KVM_STATS_BASE_", "KVM_STATS_BASE_SHIFT")}


@dataclass(frozen=True)
class Check:
    name: str  # shown in failures and test ids
    expr: str  # a C expression of integer type
    value: int  # what Python says
    guard: str | None = None  # #ifdef for items newer than 6.1


def _is_struct(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, (ctypes.Structure, ctypes.Union)) and obj.__module__ == abi.__name__


def _struct_checks(py, size_expr: str, member, guard: str | None) -> list[Check]:
    """Size of ``py`` and size/offset of each field; ``member(f)`` names field f in C
    and returns (offset expression, size expression)."""
    out = [Check(f"sizeof({py.__name__})", size_expr, ctypes.sizeof(py), guard)]
    for fname, *_ in py._fields_:
        field = getattr(py, fname)
        off, size = member(fname)
        out.append(Check(f"offsetof({py.__name__}.{fname})", off, field.offset, guard))
        out.append(Check(f"sizeof({py.__name__}.{fname})", size, field.size, guard))
    return out


# public names only: abi's import-time size loop leaves a `_struct` alias behind
STRUCTS = [v for k, v in vars(abi).items() if not k.startswith("_") and _is_struct(v)]


def build_checks() -> list[Check]:
    checks: list[Check] = []
    run_members = {ftype: fname for fname, ftype in abi.kvm_run_exit._fields_}
    for py in STRUCTS:
        name = py.__name__
        if py is abi.kvm_run_exit:
            # the anonymous union inside struct kvm_run: its members all start where `hw` does
            base = "offsetof(struct kvm_run, hw)"
            checks.append(Check("sizeof(kvm_run_exit)", f"offsetof(struct kvm_run, kvm_valid_regs) - {base}",
                                ctypes.sizeof(py)))
            for fname, ftype in py._fields_:
                checks.append(Check(f"offsetof(kvm_run_exit.{fname})", f"offsetof(struct kvm_run, {fname}) - {base}",
                                    getattr(py, fname).offset))
                checks.append(Check(f"sizeof(kvm_run_exit.{fname})", f"sizeof(((struct kvm_run *)0)->{fname})",
                                    ctypes.sizeof(ftype)))
        elif py in run_members:
            # a member of the kvm_run exit union, e.g. kvm_run_io is struct kvm_run's `io`
            m = run_members[py]
            checks += _struct_checks(
                py, f"sizeof(((struct kvm_run *)0)->{m})",
                lambda f, m=m: (f"offsetof(struct kvm_run, {m}.{f}) - offsetof(struct kvm_run, {m})",
                                f"sizeof(((struct kvm_run *)0)->{m}.{f})"), None)
        elif py is abi.kvm_run:
            def member(f):
                c = "hw" if f == "exit" else f  # the union is anonymous in C
                return f"offsetof(struct kvm_run, {c})", (
                    "(offsetof(struct kvm_run, kvm_valid_regs) - offsetof(struct kvm_run, hw))" if f == "exit"
                    else f"sizeof(((struct kvm_run *)0)->{c})")
            # abi.kvm_run is the fixed head only; C adds the sync-regs area after kvm_dirty_regs
            checks += _struct_checks(py, "offsetof(struct kvm_run, kvm_dirty_regs) + 8", member, None)
        else:
            checks += _struct_checks(
                py, f"sizeof(struct {name})",
                lambda f, n=name: (f"offsetof(struct {n}, {f})", f"sizeof(((struct {n} *)0)->{f})"),
                NEWER_STRUCTS.get(name))
    for cname, value in vars(abi).items():
        if (cname == "KVMIO" or cname.startswith("KVM_")) and type(value) is int:
            checks.append(Check(cname, cname, value, cname if cname in NEWER_MACROS else None))
    for en, (prefix, shift) in ENUMS.items():
        for member_ in en:
            macro = prefix + member_.name
            expr = f"(({macro}) >> ({shift}))" if shift else macro
            checks.append(Check(macro, expr, int(member_), macro if macro in NEWER_MACROS else None))
    return checks


CHECKS = build_checks()
GUARDED = [c for c in CHECKS if c.guard]


def c_program(checks: list[Check]) -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/kvm.h>", "", "int main(void)", "{"]
    for c in checks:
        emit = f'    printf("%s %llu\\n", "{c.name}", (unsigned long long)({c.expr}));'
        if c.guard:
            lines += [f"#ifdef {c.guard}", emit, "#else", f'    printf("%s absent\\n", "{c.name}");', "#endif"]
        else:
            lines.append(emit)
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def header_values(tmp_path_factory) -> dict[str, int | None]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    if not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("<linux/kvm.h> is missing (apt-get install linux-libc-dev)")
    d = tmp_path_factory.mktemp("abi")
    (d / "abi.c").write_text(c_program(CHECKS))
    cc = subprocess.run([gcc, "-O0", "-Wall", "-o", str(d / "abi"), str(d / "abi.c")], capture_output=True, text=True)
    assert cc.returncode == 0, f"the ABI check program does not compile against <linux/kvm.h>:\n{cc.stderr[-3000:]}"
    out = subprocess.run([str(d / "abi")], capture_output=True, text=True, check=True).stdout
    values: dict[str, int | None] = {}
    for line in out.splitlines():
        name, value = line.rsplit(" ", 1)
        values[name] = None if value == "absent" else int(value)
    return values


def test_checks_cover_the_whole_abi_module():
    """Every structure and field and the enums are in the generated list."""
    names = {c.name for c in CHECKS}
    for required in ("sizeof(kvm_sregs)", "offsetof(kvm_run.exit)", "offsetof(kvm_run_io.data_offset)",
                     "sizeof(kvm_stats_desc)", "KVM_RUN", "KVM_GET_SUPPORTED_CPUID", "KVM_CAP_NR_MEMSLOTS",
                     "KVM_EXIT_SYSTEM_EVENT", "KVM_STATS_UNIT_BOOLEAN", "offsetof(kvm_run_exit.mmio)"):
        assert required in names
    fields = sum(len(v._fields_) for v in STRUCTS)
    assert len([c for c in CHECKS if c.name.startswith("offsetof(")]) == fields


def test_abi_matches_system_header(header_values):
    """All items present in every supported header: sizes, offsets, ioctl numbers, constants."""
    mismatches = []
    for c in CHECKS:
        if c.guard:
            continue
        got = header_values[c.name]
        if got != c.value:
            mismatches.append(f"{c.name}: header {got}, kvmctl {c.value}")
    assert not mismatches, "ABI drift against <linux/kvm.h>:\n" + "\n".join(mismatches)
    assert len(header_values) == len(CHECKS)


@pytest.mark.parametrize("check", GUARDED, ids=[c.name for c in GUARDED])
def test_newer_abi_item(header_values, check):
    """Items newer than a 6.1 header: compared when the header has them, skipped otherwise."""
    got = header_values[check.name]
    if got is None:
        pytest.skip(f"the system <linux/kvm.h> predates {check.guard}; update linux-libc-dev to check it")
    assert got == check.value, f"{check.name}: header {got}, kvmctl {check.value}"


def test_ioctl_encoding_matches_asm_generic():
    """The _IOC arithmetic itself, on numbers fixed by the ABI for decades."""
    assert abi.KVM_RUN == 0xAE80
    assert abi.KVM_GET_REGS == 0x8090AE81  # _IOR, 144 bytes
    assert abi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46  # _IOW, 32 bytes
    assert abi.KVM_GET_SUPPORTED_CPUID == 0xC008AE05  # _IOWR, 8-byte header
