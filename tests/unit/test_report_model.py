"""Report model: JSON round trip, required keys, load errors, safe writes."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from kvmctl.errors import KvmctlError, UsageError
from kvmctl.report import files, output
from kvmctl.trace.hist import log2_buckets
from kvmctl.report.schema import SCHEMA_VERSION, Bucket, ContentionRow, HeatMap, Memslot, Mmu, PassRow, Report, TaskAging, TaskClass, Verdict, WaiterClass
from kvmctl.report.figures import REQUIRED_FIGURES, headline_figures
from kvmctl.report.files import load_report, write_report

SLOT = Memslot(0, 0x100000000, 0x100000000 + (1 << 20), 0x7F0000000000, 0x7F0000000000 + (1 << 20), 1 << 20, "file",
               "/tmp/guest.mem")


def _report() -> Report:
    r = Report(complete=True, created="2026-11-25T15:00:00+00:00", command_line=["kvmctl", "experiment"])
    r.host.mmu = Mmu.SHADOW
    r.memslots.append(SLOT)
    r.aging.calls, r.aging.pages, r.aging.background_calls = 10, 30, 4
    r.aging.by_task.append(TaskAging(7, "kdamond.0", TaskClass.KDAMOND, 4, 12))
    r.mark_not_observable("aging.bits_cleared", "no TDP MMU")
    r.passes.append(PassRow(1, "memcg", 5, 9, hot_resident_fraction=1.0, refaults=0))
    r.contention.rows.append(ContentionRow(3, 300, 200, 100, "rwlock:W", "kvm_mmu_page_fault+0x1", WaiterClass.VM,
                                           True))
    r.histograms["aging_latency_ns:kvm_age_hva"] = [Bucket(0, 1, 2), Bucket(2, 3, 5)]
    r.fallback.verdict = Verdict.RMAP_SHADOW
    r.vm_stats = {"pages_4k": 256, "hist": [1, 2, 3]}
    r.spec = {"size": "1M", "vcpus": 1}
    return r


def test_round_trip():
    r = _report()
    data = json.loads(files.report_json(r))
    assert Report.from_dict(data) == r
    assert data["aging"]["by_task"][0]["class"] == "kdamond"  # JSON keys, not Python names
    assert data["passes"][0]["pass"] == 1
    assert data["fallback"]["verdict"] == "rmap (no TDP MMU: shadow paging)"


def test_required_keys_exist_even_when_unknown():
    data = Report().to_dict()
    for key in REQUIRED_FIGURES + ("schema_version", "complete", "probes.chosen", "probes.not_observable", "memslots"):
        node = data
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert data["schema_version"] == SCHEMA_VERSION and data["complete"] is False


def test_null_reasons():
    r = _report()
    assert r.aging.bits_cleared is None
    assert r.reason_for("aging.bits_cleared") == "no TDP MMU"
    assert "ground_truth.refaults" in r.unexplained_nulls()  # a producer bug is visible
    assert "aging.bits_cleared" not in r.unexplained_nulls()
    r.complete = False
    assert r.reason_for("ground_truth.refaults") == "the run was cut short first"


def test_headline_figures_are_numbers_or_null():
    figs = headline_figures(_report())
    assert figs["aging.calls"] == 10.0 and figs["aging.bits_cleared"] is None


def test_bcc_slots():
    assert log2_buckets([0, 3, 0, 5], dense=True) == [Bucket(0, 1, 3), Bucket(2, 3, 0), Bucket(4, 7, 5)]
    assert log2_buckets([], dense=True) == []


def test_heatmap_bins_keep_totals_and_ignore_foreign_gfns():
    base = SLOT.gpa_start // 4096
    aged = {base + i: 2 for i in range(256)} | {base - 1: 99, base + 256: 99}
    touched = {base + i: 1 for i in range(64)}
    hm = HeatMap.from_gfn_counts(SLOT, aged, touched, bins=16)
    assert hm.bins == 16 and len(hm.aged) == 16 and sum(hm.aged) == 512
    assert hm.touched == [16] * 4 + [0] * 12
    tiny = Memslot(1, 0, 8192, 0, 8192, 8192, "anon")
    assert HeatMap.from_gfn_counts(tiny, {0: 1, 1: 1}, {}).bins == 2


# --- loading ------------------------------------------------------------------------------------


def _expect_usage(path, *phrases):
    with pytest.raises(UsageError) as info:
        load_report(path)
    err = info.value
    assert "\n" not in err.one_line() and err.hint
    for phrase in phrases:
        assert phrase in err.message, err.message
    return err


def test_load_missing(tmp_path):
    _expect_usage(tmp_path / "nope.json", "does not exist")


def test_load_directory(tmp_path):
    _expect_usage(tmp_path, "is a directory")


def test_load_empty(tmp_path):
    (tmp_path / "r.json").write_text("")
    _expect_usage(tmp_path / "r.json", "is empty")


def test_load_not_json(tmp_path):
    (tmp_path / "r.json").write_text("schema_version = 1\n")
    _expect_usage(tmp_path / "r.json", "is not JSON")


def test_load_binary(tmp_path):
    (tmp_path / "r.json").write_bytes(b"\xff\xfe\x00garbage")
    _expect_usage(tmp_path / "r.json", "not UTF-8")


def test_load_truncated_file(tmp_path):
    text = files.report_json(_report())
    (tmp_path / "r.json").write_text(text[: len(text) // 2])
    _expect_usage(tmp_path / "r.json", "truncated")


def test_truncated_at_every_point():
    text = files.report_json(_report())
    for cut in range(1, len(text) - 2):  # inside strings, numbers, literals, keys, between items
        with pytest.raises(UsageError, match="truncated"):
            files.parse_report_text(text[:cut], "r.json")


def test_load_other_json(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"traceEvents": []}))
    _expect_usage(tmp_path / "r.json", "is not a kvmctl report")


def test_load_future_version(tmp_path):
    data = _report().to_dict() | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "r.json").write_text(json.dumps(data))
    err = _expect_usage(tmp_path / "r.json", "written by a newer kvmctl", f"schema {SCHEMA_VERSION + 1}")
    assert err.hint == "upgrade kvmctl"


def test_load_older_unknown_version(tmp_path):
    data = _report().to_dict() | {"schema_version": 0}
    (tmp_path / "r.json").write_text(json.dumps(data))
    _expect_usage(tmp_path / "r.json", "schema 0")


def test_load_migrates_older_version(tmp_path, monkeypatch):
    """A registered migration runs before validation."""
    data = _report().to_dict()
    data["schema_version"] = 0
    data["aging"]["calls_total"] = data["aging"].pop("calls")
    (tmp_path / "r.json").write_text(json.dumps(data))

    def v0_to_v1(d):
        d["aging"]["calls"] = d["aging"].pop("calls_total")
        return d | {"schema_version": 1}

    monkeypatch.setitem(files.MIGRATIONS, 0, v0_to_v1)
    assert load_report(tmp_path / "r.json") == _report()


@pytest.mark.parametrize(
    "mutate, phrase",
    [
        (lambda d: d.__setitem__("schema_version", "1"), "malformed schema_version"),
        (lambda d: d["aging"].__setitem__("calls", "many"), "aging.calls should be an integer"),
        (lambda d: d["aging"].__setitem__("calls", True), "aging.calls should be an integer"),
        (lambda d: d["host"].__setitem__("mmu", "ept"), "host.mmu should be one of"),
        (lambda d: d["memslots"][0].pop("slot"), "memslots[0].slot is missing"),
        (lambda d: d.__setitem__("passes", {}), "passes should be a list"),
        (lambda d: d["ground_truth"].__setitem__("refaults", 1.5), "ground_truth.refaults should be an integer"),
    ],
)
def test_load_bad_fields(tmp_path, mutate, phrase):
    data = _report().to_dict()
    mutate(data)
    (tmp_path / "r.json").write_text(json.dumps(data))
    _expect_usage(tmp_path / "r.json", phrase)


# --- writing ------------------------------------------------------------------------------------


def test_write_atomic_mode_and_replace(tmp_path):
    old_umask = os.umask(0o077)
    try:
        path = tmp_path / "r.json"
        path.write_text("old")
        write_report(_report(), path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load_report(path) == _report()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_write_refuses_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "r.json"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        write_report(_report(), link)
    assert victim.read_text() == "precious" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "victim"]


def test_write_refuses_dangling_symlink(tmp_path):
    link = tmp_path / "r.json"
    link.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(UsageError, match="symbolic link"):
        write_report(_report(), link)
    assert not (tmp_path / "would-be-created").exists()


def test_write_refuses_directory(tmp_path):
    (tmp_path / "r.json").mkdir()
    with pytest.raises(UsageError, match="not a regular file"):
        write_report(_report(), tmp_path / "r.json")


def test_write_missing_directory(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        write_report(_report(), tmp_path / "no" / "r.json")


def test_write_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("old")

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output.os, "fsync", full)
    with pytest.raises(KvmctlError, match="no space left") as info:
        write_report(_report(), path)
    assert info.value.hint
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_write_rejects_non_finite_numbers(tmp_path):
    r = _report()
    r.ground_truth.hot_resident_fraction = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_report(r, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.root
def test_write_chowns_to_sudo_user(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can chown to SUDO_UID")
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65534")
    path = write_report(_report(), tmp_path / "r.json")
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_no_chown_without_sudo(tmp_path, monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    path = write_report(_report(), tmp_path / "r.json")
    assert path.stat().st_uid == os.geteuid()


def test_write_rejects_values_that_would_not_load_again(tmp_path):
    r = _report()
    r.host.lockless_aging = "y"  # a string where the schema says bool
    with pytest.raises(ValueError, match="host.lockless_aging should be true or false"):
        write_report(r, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_schema_doc_names_every_field():
    """docs/report-schema.md documents every JSON key of the model."""
    import dataclasses
    import typing
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-schema.md").read_text()
    seen, todo, missing = set(), [Report], []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f.metadata.get("key", f.name)
            if f"`{key}`" not in doc:
                missing.append(f"{cls.__name__}.{key}")
            stack = [hints[f.name]]
            while stack:  # find nested dataclasses inside Optional/list/dict
                tp = stack.pop()
                if dataclasses.is_dataclass(tp):
                    todo.append(tp)
                stack.extend(typing.get_args(tp))
    assert missing == []
