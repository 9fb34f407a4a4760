"""The Python enums index the BPF maps exactly as the C enums do."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest

from kvmctl import vocab
from kvmctl.trace import records
from kvmctl.trace.loader import ebpf_dir

_ENUM_RE = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.S)
_ITEM_RE = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*,", re.M)

# C enum (file, name) -> (Python enum, C prefix stripped from item names)
MIRRORS = [
    ("ranges.h", "cfg", records.Cfg, "CFG_"),
    ("aging.c", "event_kind", records.EventKind, "KIND_"),
    ("ranges.h", "task_class", vocab.TaskClass, "CLASS_"),
    ("aging.c", "aging_lost", records.AgingLost, "LOST_"),
    ("spte.c", "spte_count", records.SpteCount, "CNT_"),
    ("spte.c", "spte_lost", records.SpteLost, "LOST_"),
    ("spte.c", "harvest_flag", records.HarvestFlag, "HV_"),
    ("locks.c", "waiter_class", vocab.WaiterClass, "WAITER_"),
    ("locks.c", "locks_lost", records.LocksLost, "LOST_"),
    ("funcs.c", "fn_role", records.FuncRole, "ROLE_"),
    ("funcs.c", "funcs_lost", records.FuncsLost, "LOST_"),
    ("notifier.c", "age_op", records.AgeOp, "OP_"),
    ("notifier.c", "age_path", records.NotifierPath, "AGE_PATH_"),
    ("notifier.c", "notifier_lost", records.NotifierLost, "LOST_"),
]


def c_enums(path: Path) -> dict[str, dict[str, int]]:
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    return {m.group(1): {k: int(v) for k, v in _ITEM_RE.findall(m.group(2))} for m in _ENUM_RE.finditer(text)}


@pytest.mark.parametrize(("source", "c_name", "py_enum", "prefix"), MIRRORS, ids=[f"{m[0]}:{m[1]}" for m in MIRRORS])
def test_python_enum_mirrors_c_enum(source, c_name, py_enum: type[enum.Enum], prefix):
    items = c_enums(ebpf_dir() / source)[c_name]
    c_items = {k.removeprefix(prefix): v for k, v in items.items() if not k.startswith("NR_")}
    # IntEnums are the map index themselves; the shared string enums carry it as ``code``
    assert c_items == {m.name: getattr(m, "code", m.value) for m in py_enum}
    counts = [v for k, v in items.items() if k.startswith("NR_")]
    if counts:  # NR_* closes the enum and sizes the maps
        assert counts == [len(py_enum)]


def test_path_bits_match_funcs_c():
    items = c_enums(ebpf_dir() / "funcs.c")["path_bits"]
    assert items["PATH_TDP"] == records.AgingPath.TDP
    assert items["PATH_RMAP"] == records.AgingPath.RMAP
    assert items["NR_PATHS"] == len(records.AgingPath)
