"""Finding kernel headers for BCC, and the merged Debian tree of the fallback."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from kvmctl.errors import PermissionDeniedError, UnsupportedError
from kvmctl.probe import tracing
from kvmctl.probe.bpf import Headers, debian_header_trees, find_headers
from kvmctl.trace import loader
from kvmctl.trace.loader import kernel_source_env, merge_trees

NO_KHEADERS = Path("/nonexistent/kheaders.tar.xz")


def _tree(path: Path, release: str | None = None, files: tuple[str, ...] = ()) -> Path:
    path.mkdir(parents=True)
    if release:
        (path / "include" / "generated").mkdir(parents=True)
        (path / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    for f in files:
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        (path / f).write_text(f)
    return path


def _debian(src: Path, ver: str) -> None:
    _tree(src / f"linux-headers-{ver}-amd64", f"{ver}-amd64", ("arch/x86/include/generated/asm/x.h",))
    _tree(src / f"linux-headers-{ver}-common", None, ("include/linux/kvm_host.h", "arch/x86/include/asm/y.h"))


def test_exact_headers_under_lib_modules(tmp_path):
    build = _tree(tmp_path / "src" / "k", "6.1.0-56-amd64")
    (tmp_path / "mods" / "6.1.0-56-amd64").mkdir(parents=True)
    (tmp_path / "mods" / "6.1.0-56-amd64" / "build").symlink_to(build)
    h = find_headers("6.1.0-56-amd64", tmp_path / "mods", tmp_path / "src", NO_KHEADERS)
    assert h.exact and h.bcc_finds_them and h.note() is None


def test_mismatched_link_is_said_plainly(tmp_path):
    _debian(tmp_path / "src", "6.1.0-56")
    mods = tmp_path / "mods" / "6.18.44"
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(tmp_path / "src" / "linux-headers-6.1.0-56-amd64")
    (mods / "source").symlink_to(tmp_path / "src" / "linux-headers-6.1.0-56-common")
    h = find_headers("6.18.44", tmp_path / "mods", tmp_path / "src", NO_KHEADERS)
    assert not h.exact and h.source is not None
    assert h.note() == ("BCC compiled against mismatched kernel headers 6.1.0-56-amd64 (running 6.18.44): "
                        "tracepoint programs only read their own records, which is safe")


def test_fallback_picks_the_newest_debian_pair(tmp_path):
    src = tmp_path / "src"
    for ver in ("6.1.0-9", "6.1.0-56", "5.10.0-30"):
        _debian(src, ver)
    _tree(src / "linux-headers-6.5.0-1-amd64", "6.5.0-1-amd64")  # no common tree: unusable
    assert [a.name for a, _ in debian_header_trees(src)] == [
        "linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-9-amd64", "linux-headers-5.10.0-30-amd64"]
    h = find_headers("6.18.44", tmp_path / "mods", src, NO_KHEADERS)
    assert h.release == "6.1.0-56-amd64" and not h.bcc_finds_them and not h.exact


def test_no_headers_at_all_names_the_package(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(UnsupportedError) as err:
        find_headers("6.18.44", tmp_path / "mods", tmp_path / "src", NO_KHEADERS)
    assert "linux-headers-amd64" in err.value.hint


def test_merged_tree_is_the_union_and_is_removed(tmp_path, monkeypatch):
    _debian(tmp_path / "src", "6.1.0-56")
    arch = tmp_path / "src" / "linux-headers-6.1.0-56-amd64"
    common = tmp_path / "src" / "linux-headers-6.1.0-56-common"
    merged = tmp_path / "merged"
    merge_trees(merged, [arch, common])
    assert (merged / "include" / "generated" / "utsrelease.h").is_file()
    assert (merged / "include" / "linux" / "kvm_host.h").is_file()
    assert (merged / "arch" / "x86" / "include" / "generated" / "asm" / "x.h").is_file()
    assert (merged / "arch" / "x86" / "include" / "asm" / "y.h").is_file()

    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    h = Headers("6.1.0-56-amd64", "6.18.44", arch, common, bcc_finds_them=False, found_at=arch)
    with kernel_source_env(h):
        tree = Path(os.environ["BCC_KERNEL_SOURCE"])
        assert (tree / "include" / "linux" / "kvm_host.h").is_file()
    assert "BCC_KERNEL_SOURCE" not in os.environ
    assert not tree.exists()


def test_preflight_errors_carry_a_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(tracing, "TRACEFS_DIRS", (tmp_path / "tracing",))
    with pytest.raises(UnsupportedError) as err:
        tracing.require_tracefs()
    assert err.value.hint == "mount it: mount -t tracefs nodev /sys/kernel/tracing"
    (tmp_path / "tracing" / "events").mkdir(parents=True)
    assert tracing.require_tracefs() == tmp_path / "tracing"

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionDeniedError):
        loader.require_root()


def test_missing_or_wrong_bcc_module_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)  # import fails
    with pytest.raises(UnsupportedError) as err:
        loader.import_bcc()
    assert "python3-bpfcc" in err.value.hint
    monkeypatch.setitem(sys.modules, "bcc", types.ModuleType("bcc"))  # PyPI's unrelated 'bcc'
    with pytest.raises(UnsupportedError) as err:
        loader.import_bcc()
    assert "is not BCC" in err.value.message
