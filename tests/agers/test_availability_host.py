"""What this host offers each ager, checked against the host's own files (read-only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmctl.agers import AgerContext, get_ager, list_agers
from kvmctl.agers.damon import DamonAger
from kvmctl.probe.memory import DAMON_ADMIN
from kvmctl.kvm import Memslot
from kvmctl.errors import UnsupportedError

pytestmark = pytest.mark.root


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the probes read root-only files")


@pytest.mark.parametrize("name", list_agers())
def test_every_ager_answers_with_a_reason(name):
    avail = get_ager(name).availability()
    assert avail.reason
    if not avail.ok:
        assert avail.remedy


def test_mglru_availability_follows_the_kernel():
    _needs_root()
    present = Path("/sys/kernel/mm/lru_gen/enabled").exists() and Path("/sys/kernel/debug/lru_gen").exists()
    avail = get_ager("mglru").availability()
    assert avail.ok == present
    if not Path("/sys/kernel/mm/lru_gen/enabled").exists():
        assert "CONFIG_LRU_GEN" in avail.reason


def test_page_idle_availability_follows_the_kernel():
    _needs_root()
    avail = get_ager("page_idle").availability()
    assert avail.ok == Path("/sys/kernel/mm/page_idle/bitmap").exists()
    if not avail.ok:
        assert "page_idle/bitmap" in avail.reason


def test_unavailable_ager_refuses_to_prepare():
    _needs_root()
    for name in ("mglru", "page_idle"):
        ager = get_ager(name)
        if ager.availability().ok:
            continue
        with pytest.raises(UnsupportedError) as exc:
            ager.prepare(AgerContext(None, os.getpid(), []))
        assert exc.value.hint


def _damon_state() -> dict[str, str]:
    """The parts of DAMON sysfs a kvmctl write would change (read-only)."""
    kd = DAMON_ADMIN / "kdamonds"
    out = {"nr_kdamonds": (kd / "nr_kdamonds").read_text()}
    for d in kd.glob("[0-9]*"):
        for rel in ("state", "pid", "contexts/nr_contexts", "contexts/0/operations",
                    "contexts/0/targets/nr_targets", "contexts/0/schemes/nr_schemes"):
            f = d / rel
            if f.exists():
                out[f"{d.name}/{rel}"] = f.read_text()
    return out


def test_damon_refuses_a_foreign_kdamond_and_writes_nothing(monkeypatch):
    _needs_root()
    if not (DAMON_ADMIN / "kdamonds" / "nr_kdamonds").exists():
        pytest.skip(f"{DAMON_ADMIN} is absent: no DAMON sysfs on this kernel")
    nr = int((DAMON_ADMIN / "kdamonds" / "nr_kdamonds").read_text())
    if nr == 0:
        pytest.skip("no kdamond runs on this host; the refusal is covered on fake trees in tests/unit")
    writes: list[tuple[Path, str]] = []

    def no_writes(self, path, value):  # belt and braces: a write attempt fails the test
        writes.append((path, value))
        raise AssertionError(f"DamonAger tried to write {path}")

    monkeypatch.setattr(DamonAger, "_write", no_writes)
    before = _damon_state()
    ager = get_ager("damon")
    avail = ager.availability()
    assert not avail.ok
    assert "did not create" in avail.reason and "kdamonds/0" in avail.reason
    with pytest.raises(UnsupportedError):
        ager.prepare(AgerContext(None, os.getpid(), [Memslot.at(0, 0, 4096, 0x7F0000000000)]))
    ager.restore()
    assert writes == []
    assert _damon_state() == before
