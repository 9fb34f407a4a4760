"""Pure logic of `kvmctl lab`: kernel resolution, bzImage headers, command lines."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kvmctl.errors import UnsupportedError, UsageError
from kvmctl.lab import kernel as K
from kvmctl.lab.runner import (ERR_FILE, KVMCTL_ROOT, LAB_ACCEL, LAB_CPU, OUT_FILE, STATUS_FILE, LabSpec, inside_argv,
                               output_paths, resolve_command, share_dirs, vng_argv)

PY = "/opt/venv/bin/python"


def make_bzimage(path: Path, release: str = "6.1.0-56-amd64", magic: bytes = b"HdrS") -> Path:
    """A file laid out like an x86 bzImage's setup header (boot protocol 2.x)."""
    data = bytearray(0x4000)
    data[0x202:0x206] = magic
    version_at = 0x1200
    data[0x20E:0x210] = (version_at - 0x200).to_bytes(2, "little")
    text = f"{release} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\0".encode()
    data[version_at:version_at + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def test_bzimage_release_reads_the_version_string(tmp_path):
    assert K.bzimage_release(make_bzimage(tmp_path / "bzImage", "6.9.0-rc1+")) == "6.9.0-rc1+"


def test_bzimage_release_rejects_a_file_without_boot_header(tmp_path):
    with pytest.raises(UsageError, match="not an x86 bzImage") as exc:
        K.bzimage_release(make_bzimage(tmp_path / "vmlinux", magic=b"\x7fELF"))
    assert exc.value.hint


def test_stock_kernel_missing_names_the_setup_script(tmp_path):
    with pytest.raises(UnsupportedError) as exc:
        K.stock_kernel(tmp_path)
    assert "scripts/setup-lab.sh" in exc.value.one_line()


def test_stock_kernel_from_an_unpacked_debian_package(tmp_path, monkeypatch):
    rel = "6.1.0-56-amd64"
    tree = tmp_path / "kernels" / rel
    (tree / "boot").mkdir(parents=True)
    make_bzimage(tree / "boot" / f"vmlinuz-{rel}", rel)
    (tree / "lib/modules" / rel / "kernel").mkdir(parents=True)
    (tmp_path / "stock").symlink_to(f"kernels/{rel}")
    src = tmp_path / "src"
    (src / f"linux-headers-{rel}").mkdir(parents=True)
    (src / f"linux-headers-{rel}" / "Makefile").write_text("")
    (src / "linux-headers-6.1.0-56-common").mkdir()
    monkeypatch.setattr(K.debian_headers, "__defaults__", (src,))
    k = K.stock_kernel(tmp_path)
    assert k.source is K.KernelSource.STOCK and k.release == rel
    assert k.modules == (tree / "lib/modules" / rel).resolve()
    assert k.headers == src / f"linux-headers-{rel}"
    assert k.headers_common == src / "linux-headers-6.1.0-56-common"


def test_stock_kernel_without_headers_is_unsupported(tmp_path, monkeypatch):
    rel = "6.1.0-56-amd64"
    tree = tmp_path / "stock"
    (tree / "boot").mkdir(parents=True)
    make_bzimage(tree / "boot" / f"vmlinuz-{rel}", rel)
    (tree / "lib/modules" / rel / "kernel").mkdir(parents=True)
    monkeypatch.setattr(K.debian_headers, "__defaults__", (tmp_path / "nosrc",))
    with pytest.raises(UnsupportedError, match="headers for the lab kernel"):
        K.stock_kernel(tmp_path)


def test_user_kernel_build_tree(tmp_path):
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    make_bzimage(tree / "arch/x86/boot/bzImage", "6.12.0-tcy+")
    (tree / ".config").write_text("CONFIG_KVM_AMD=m\n")
    (tree / "include/config").mkdir(parents=True)
    (tree / "include/config/kernel.release").write_text("6.12.0-tcy+\n")
    (tree / "arch/x86/kvm").mkdir()
    (tree / "arch/x86/kvm/kvm-amd.ko").write_bytes(b"")
    k = K.user_kernel(tree)
    assert (k.source, k.release, k.tree, k.headers) == (K.KernelSource.TREE, "6.12.0-tcy+", tree.resolve(),
                                                        tree.resolve())
    assert k.modules == tree


def test_user_kernel_tree_without_bzimage_says_how_to_build(tmp_path):
    (tmp_path / ".config").write_text("")
    with pytest.raises(UsageError, match="bzImage") as exc:
        K.user_kernel(tmp_path)
    assert "make" in exc.value.hint


def test_user_kernel_missing_path(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        K.user_kernel(tmp_path / "nope")


def test_user_kernel_bare_image_has_no_modules(tmp_path):
    k = K.user_kernel(make_bzimage(tmp_path / "bzImage", "6.13.0"))
    assert (k.source, k.modules, k.tree) == (K.KernelSource.IMAGE, None, None)


@pytest.mark.parametrize("command, want", [
    ([], [PY, "-m", "kvmctl.lab.selfcheck"]),
    (["kvmctl", "info", "--json"], [PY, "-m", "kvmctl", "info", "--json"]),
    (["pytest", "-m", "tdp"], [PY, "-m", "pytest", "-m", "tdp"]),
    (["python", "-c", "1"], [PY, "-c", "1"]),
    (["bpftrace", "-l"], ["bpftrace", "-l"]),
])
def test_resolve_command_runs_our_interpreter(command, want):
    assert resolve_command(command, PY) == want


def _spec(tmp_path, **kw) -> LabSpec:
    kernel = K.LabKernel(K.KernelSource.STOCK, Path("/lab/boot/vmlinuz-6.1.0-56-amd64"), "6.1.0-56-amd64",
                         Path("/lab/lib/modules/6.1.0-56-amd64"), Path("/usr/src/linux-headers-6.1.0-56-amd64"),
                         Path("/usr/src/linux-headers-6.1.0-56-common"))
    return LabSpec(kernel=kernel, command=[PY, "-m", "kvmctl", "info"], outdir=tmp_path, python=PY, **kw)


def test_vng_argv_emulates_svm_npt_and_shares_outputs(tmp_path):
    scratch = Path("/tmp/kvmctl-lab-x")
    argv = vng_argv(_spec(tmp_path, cpus=3, memory=3 << 30), Path("/v/bin/vng"), scratch)
    assert argv[:3] == ["/v/bin/vng", "--run", "/lab/boot/vmlinuz-6.1.0-56-amd64"]
    assert "--disable-kvm" in argv
    assert argv[argv.index("--cpus") + 1] == "3" and argv[argv.index("--memory") + 1] == "3072M"
    assert f"--qemu-opts=-cpu {LAB_CPU} -accel {LAB_ACCEL}" in argv
    assert "thread=single" in LAB_ACCEL and "+svm" in LAB_CPU and "+npt" in LAB_CPU
    assert f"--rwdir={scratch}" in argv and f"--rwdir={tmp_path.resolve()}" in argv
    shell = argv[argv.index("--exec") + 1]
    words = shlex.split(shell)
    assert words[:4] == ["cd", str(tmp_path.resolve()), "&&", f"PYTHONPATH={KVMCTL_ROOT}"]
    inside = inside_argv(_spec(tmp_path), scratch)
    assert words[4:4 + len(inside)] == inside
    assert inside[-5:] == ["--", PY, "-m", "kvmctl", "info"]
    # output and status through the scratch dir, whatever virtme-ng's script ports do
    assert words[4 + len(inside):] == ["</dev/null", f">{scratch}/{OUT_FILE}", f"2>{scratch}/{ERR_FILE};",
                                       "echo", "$?", f">{scratch}/{STATUS_FILE}"]
    assert "--headers" in words and "--headers-common" in words


def test_vng_argv_boots_a_build_tree_as_a_dir(tmp_path):
    spec = _spec(tmp_path)
    tree = tmp_path / "linux"
    kernel = K.LabKernel(K.KernelSource.TREE, tree / "arch/x86/boot/bzImage", "6.12.0", tree, tree, None)
    argv = vng_argv(LabSpec(kernel=kernel, command=spec.command, outdir=tmp_path, python=PY), Path("vng"),
                    Path("/s"))
    assert argv[2] == str(tree)
    assert "--headers-common" not in argv[argv.index("--exec") + 1]


def test_vng_argv_refuses_to_share_root(tmp_path):
    with pytest.raises(UsageError, match="cannot share /"):
        vng_argv(_spec(Path("/")), Path("vng"), Path("/s"))


@pytest.mark.parametrize("command, want", [
    (["kvmctl", "experiment", "-o", "a.json", "--mem", "64M"], ["a.json"]),
    (["kvmctl", "experiment", "-ob.json"], ["b.json"]),
    (["kvmctl", "experiment", "--output=/x/c.json"], ["/x/c.json"]),
    (["kvmctl", "report", "diff", "A", "B", "--html", "d.html"], ["d.html"]),
    (["kvmctl", "experiment", "--outdir-like", "x"], []),
    (["pytest", "-o", "cache_dir=x"], []),  # pytest's -o is an ini option, not a file
])
def test_output_paths_are_the_kvmctl_output_flags(command, want):
    assert output_paths(command) == want


def test_outputs_outside_the_outdir_have_their_dir_shared(tmp_path):
    out, other = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    (other / "deeper").mkdir(parents=True)
    assert share_dirs(["kvmctl", "experiment", "-o", "r.json"], out) == []
    assert share_dirs(["kvmctl", "experiment", "-o", str(out / "sub" / "r.json")], out) == []
    cmd = ["kvmctl", "experiment", "-o", str(other / "deeper" / "r.json"), "--html", str(other / "r.html")]
    assert share_dirs(cmd, out) == [other.resolve()]  # one share covers both
    assert share_dirs(["kvmctl", "experiment", "-o", "../elsewhere/r.json"], out) == [other.resolve()]
    argv = vng_argv(_spec(out, share=(other.resolve(),)), Path("vng"), Path("/s"))
    assert f"--rwdir={other.resolve()}" in argv and f"--rwdir={out.resolve()}" in argv


@pytest.mark.parametrize("path, phrase", [("{tmp}/missing/r.json", "does not exist on the host"),
                                          ("/r.json", "share / read-write")])
def test_an_output_the_lab_cannot_keep_is_refused(tmp_path, path, phrase):
    with pytest.raises(UsageError, match=phrase) as exc:
        share_dirs(["kvmctl", "experiment", "-o", path.format(tmp=tmp_path)], tmp_path / "out")
    assert "--outdir" in exc.value.hint


def test_inside_gets_the_stall_time(tmp_path):
    argv = inside_argv(_spec(tmp_path, stall=90.0), Path("/s"))
    assert argv[argv.index("--stall") + 1] == "90"


def test_inside_refuses_to_touch_the_host():
    from kvmctl.lab import inside

    if inside.in_lab():
        pytest.skip("running inside a lab VM")
    with pytest.raises(UnsupportedError, match="only inside a lab VM"):
        inside.prepare("6.1.0-56-amd64", None, None)


def test_check_results_fail_skip_and_pass(monkeypatch):
    from kvmctl.lab import selfcheck as check

    def unsupported() -> str:
        raise UnsupportedError("no MGLRU here", "boot a kernel with CONFIG_LRU_GEN")

    def broken() -> str:
        raise RuntimeError("bits_cleared=0")

    monkeypatch.setattr(check, "CHECKS", {"a": lambda: "fine", "b": unsupported, "c": broken})
    a, b, c = check.run_checks(["a", "b", "c"])
    assert (a.ok, a.skipped, a.detail) == (True, False, "fine")
    assert (b.ok, b.skipped) == (False, True) and "CONFIG_LRU_GEN" in b.detail
    assert (c.ok, c.skipped, c.detail) == (False, False, "RuntimeError: bits_cleared=0")
    assert check.main(["a", "b"]) == 0 and check.main(["c"]) == 1
