"""Wrong invocations and inputs: one line naming the problem and the fix, a documented exit code, nothing left.

Every case runs `python -m kvmctl ...` as a real subprocess and asserts: the
documented exit code (2 usage, 3 unsupported, 5 permission, 1 run-time
failure), exactly one stderr line "kvmctl: error: <problem> (<fix>)" (progress
lines may precede it), no traceback, and that nothing of the run remains: no
kvmctl-<pid>-* cgroup below our memcg, no tracefs instance, no VM process, no
file in its private TMPDIR/KVMCTL_TMPDIR, our memcg's knobs, the host knobs
and DAMON's state unchanged.

Host conditions this shared host cannot be put in safely (no /dev/kvm, no
BCC, no kernel headers, tracefs unmounted, a smaller KVM vCPU limit) are
injected into the kvmctl process alone: it runs as ``python -c PRELUDE`` where
the prelude points one module attribute at a nonexistent path before calling
``kvmctl.cli.main`` (kvmctl has no environment override for these, on
purpose). "Not root" runs kvmctl as nobody through setpriv. Full and
read-only file systems are small tmpfs mounts the test creates and removes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmctl.errors import ExitCode, KvmctlError, UsageError
from kvmctl.report.schema import SCHEMA_VERSION, Report
from kvmctl.report.files import write_report
from tests.helpers.hoststate import HostState, assert_nothing_left, assert_one_line_error, private_env, run_kvmctl

USAGE, UNSUPPORTED, PERMISSION, FAILURE = ExitCode.USAGE, ExitCode.UNSUPPORTED, ExitCode.PERMISSION, ExitCode.FAILURE
kvm, bpf, root = pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# Preludes: one host condition, injected into the kvmctl process only.
NO_KVM = 'import kvmctl.kvm.system as s; s.Kvm.__init__.__defaults__ = ("/nonexistent/kvm",)'
KVM_LIMIT_2 = "import kvmctl.kvm.system as s; s.Kvm.max_vcpus = lambda self: 2"
NO_BCC = 'sys.modules["bcc"] = None'
NO_HEADERS = ('import kvmctl.probe.bpf as b; '
              'b.find_headers.__defaults__ = (None, Path("/nonexistent"), Path("/nonexistent"), Path("/nonexistent"))')
NO_TRACEFS = 'import kvmctl.probe.tracing as t; t.TRACEFS_DIRS = (Path("/nonexistent"),)'


def prelude_cmd(prelude: str) -> list[str]:
    import sys

    code = f"import sys; from pathlib import Path; {prelude}; from kvmctl.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code]


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]  # {out} {full} {ro} {reports} {tmp} are filled in
    code: ExitCode
    phrases: tuple[str, ...]
    prelude: str | None = None
    nobody: bool = False


def case(id_: str, args: str, code: ExitCode, *phrases: str, marks=(), **kw):
    return pytest.param(Bad(tuple(args.split()), code, phrases, **kw), id=id_, marks=list(marks))


EXP = "experiment --no-trace -o {out}"
CASES = [
    # sizes
    case("run-mem-zero", "run --mem 0", USAGE, "--mem must be positive"),
    case("run-mem-negative", "run --mem=-4M", USAGE, "'-4M' is not a size"),
    case("run-mem-garbage", "run --mem banana", USAGE, "not a size"),
    case("run-mem-unaligned", "run --mem 4097", USAGE, "multiple of 2 MiB"),
    case("exp-mem-unaligned", f"{EXP} --mem 3K", USAGE, "multiple of 2 MiB"),
    case("exp-mem-zero", f"{EXP} --mem 0", USAGE, "--mem must be positive"),
    case("run-mem-beyond-ram", "run --mem 100T", USAGE, "more than this host's memory"),
    case("exp-mem-beyond-ram", f"{EXP} --mem 64G", USAGE, "more than this host's memory"),
    case("exp-memslots-unsplittable", f"{EXP} --mem 64M --memslots 3", USAGE, "cannot be split into 3 memslot"),
    case("exp-memslots-zero", f"{EXP} --memslots 0", USAGE, "--memslots must be at least 1"),
    case("exp-memslots-beyond-tracer", "experiment -o {out} --mem 18M --memslots 9", USAGE,
         "memslots exceed the tracer's 8", marks=(kvm, root, bpf)),
    case("run-guest-page", "run --guest-page 3K", USAGE, "not 4K or 2M"),
    # vCPUs
    case("run-vcpus-zero", "run --vcpus 0", USAGE, "--vcpus must be at least 1"),
    case("run-vcpus-negative", "run --vcpus -1", USAGE, "--vcpus must be at least 1"),
    case("run-vcpus-beyond-kvmctl", "run --vcpus 100000", USAGE, "more than kvmctl supports"),
    case("run-vcpus-beyond-kvm", "run --mem 64M --vcpus 4", USAGE, "exceed this host's KVM limit of 2",
         prelude=KVM_LIMIT_2, marks=(kvm,)),
    # CPU placement
    case("exp-vm-cpus-outside-affinity", f"{EXP} --vm-cpus 4095", USAGE, "names CPUs 4095 this process may not use"),
    case("exp-ager-cpus-garbage", f"{EXP} --ager-cpus 1-a", USAGE, "is not a CPU list"),
    case("exp-vm-cpus-backwards", f"{EXP} --vm-cpus 3-1", USAGE, "empty or negative range"),
    case("exp-vm-nice-out-of-range", f"{EXP} --vm-nice 40", USAGE, "outside -20..19"),
    # patterns
    case("run-pattern-unknown", "run --pattern bogus", USAGE, "bad pattern 'bogus'"),
    case("run-pattern-fraction", "run --pattern hotcold:2", USAGE, "bad pattern"),
    case("run-pattern-empty-arg", "run --pattern hotcold:", USAGE, "bad pattern"),
    case("run-pattern-stride-zero", "run --pattern stride:0", USAGE, "bad pattern"),
    case("exp-pattern-random-garbage", f"{EXP} --pattern random:x", USAGE, "bad pattern"),
    case("exp-pattern-cold-every", f"{EXP} --pattern hotcold:0.25:-1", USAGE, "bad pattern"),
    # backings and file systems
    case("run-backing-unknown", "run --backing nope", USAGE, "unknown backing"),
    case("run-backing-path-not-file", "run --backing anon --backing-path {tmp}/g", USAGE, "needs --backing file"),
    case("run-hugetlb-none-reserved", "run --mem 64M --backing hugetlb", UNSUPPORTED, "no pages are reserved",
         marks=(kvm,)),
    case("exp-hugetlb-none-reserved", f"{EXP} --mem 64M --backing hugetlb --ager passive", UNSUPPORTED, "no pages are reserved",
         marks=(kvm, root)),
    case("exp-backing-full-fs", f"{EXP} --mem 64M --backing file --backing-path {{full}}/guest", USAGE,
         "No space left", marks=(kvm, root)),
    case("exp-backing-readonly-fs", f"{EXP} --mem 64M --backing file --backing-path {{ro}}/guest", USAGE,
         "Read-only file system", marks=(kvm, root)),
    case("exp-report-readonly-fs", "experiment --no-trace --mem 64M -o {ro}/r.json", USAGE, "read-only file system",
         marks=(root,)),
    case("exp-report-full-fs", "experiment --no-trace --mem 64M --passes 1 -o {full}/r.json", FAILURE,
         "no space left on device", marks=(kvm, root)),
    case("exp-report-missing-dir", "experiment -o {tmp}/no/such/dir/r.json", USAGE, "does not exist"),
    # other experiment options
    case("exp-passes-zero", f"{EXP} --passes 0", USAGE, "passes must be at least 1"),
    case("exp-repeat-zero", f"{EXP} --repeat 0", USAGE, "repeat must be at least 1"),
    case("exp-mode-unknown", f"{EXP} --mode sideways", USAGE, "invalid choice"),
    case("exp-epoch-timeout", f"{EXP} --epoch-timeout abc", USAGE, "not a duration"),
    case("exp-settle-zero", f"{EXP} --settle 0", USAGE, "settle must be positive"),
    case("exp-ager-opt", f"{EXP} --ager-opt foo", USAGE, "not key=value"),
    case("exp-ager-unknown", f"{EXP} --ager bogus", USAGE, "unknown ager"),
    case("exp-ager-opt-unknown-key", f"{EXP} --ager-opt squeze=0.5", USAGE, "ager memcg has no option 'squeze'",
         "squeeze_guest"),
    case("exp-ager-opt-bad-value", f"{EXP} --ager-opt steps=0", USAGE, "steps=0 must be a whole number"),
    case("exp-ager-opt-two-targets", f"{EXP} --ager-opt squeeze=0.2 --ager-opt target_bytes=4096", USAGE,
         "both set the squeeze's target"),
    case("exp-ager-opt-other-ager", f"{EXP} --ager passive --ager-opt steps=4", USAGE, "ager passive has no option"),
    case("exp-squeeze-whole", f"{EXP} --squeeze 2", USAGE, "--squeeze 2 is not a fraction"),
    case("exp-squeeze-zero", f"{EXP} --squeeze 0", USAGE, "--squeeze 0 is not a fraction"),
    case("exp-squeeze-not-memcg", f"{EXP} --ager passive --squeeze 0.5", USAGE, "--squeeze sets the memcg"),
    # no abbreviations: a prefix of a flag is not that flag
    case("exp-flag-prefix", f"{EXP} --epochs 3", USAGE, "unrecognized arguments: --epochs 3",
         "see 'kvmctl experiment --help'"),
    case("run-flag-prefix", "run --dur 1s", USAGE, "unrecognized arguments: --dur", "see 'kvmctl run --help'"),
    case("run-epochs-and-duration", "run --epochs 3 --duration 1s", USAGE, "--epochs and --duration"),
    case("report-action-flag", "report show {reports}/good.json --bogus", USAGE, "see 'kvmctl report show --help'"),
    # TOML specs
    case("spec-missing", f"{EXP} --spec {{tmp}}/none.toml", USAGE, "does not exist"),
    case("spec-malformed", f"{EXP} --spec {{specs}}/malformed.toml", USAGE, "not valid TOML", "line 2"),
    case("spec-not-utf8", f"{EXP} --spec {{specs}}/binary.toml", USAGE, "not valid TOML"),
    case("spec-unknown-key", f"{EXP} --spec {{specs}}/unknown.toml", USAGE, "unknown key 'bogus'"),
    case("spec-wrong-type", f"{EXP} --spec {{specs}}/wrongtype.toml", USAGE, "wrong type"),
    case("spec-unknown-ager", f"{EXP} --spec {{specs}}/ager.toml", USAGE, "unknown ager 'nope'"),
    # reports
    case("report-show-corrupt", "report show {reports}/corrupt.json", USAGE, "is not JSON"),
    case("report-show-truncated", "report show {reports}/truncated.json", USAGE, "truncated"),
    case("report-html-future", "report html {reports}/future.json -o {tmp}/r.html", USAGE, "upgrade kvmctl"),
    case("report-trace-not-report", "report trace {reports}/other.json -o {tmp}/t.json", USAGE,
         "not a kvmctl report"),
    case("report-show-missing", "report show {tmp}/none.json", USAGE, "does not exist"),
    case("report-show-directory", "report show {reports}", USAGE, "is a directory"),
    case("report-diff-one", "report diff {reports}/good.json", USAGE, "at least two reports"),
    case("report-diff-corrupt", "report diff {reports}/good.json {reports}/corrupt.json", USAGE, "is not JSON"),
    case("report-html-symlink", "report html {reports}/good.json -o {reports}/link.html", USAGE,
         "symbolic link"),
    case("report-no-action", "report", USAGE, "required"),
    # info, lab, top level
    case("info-bad-flag", "info --bogus", USAGE, "unrecognized arguments"),
    case("lab-cpus-zero", "lab --cpus 0 -- true", USAGE, "--cpus must be at least 1"),
    case("lab-kernel-missing", "lab --kernel /nonexistent/bzImage -- true", USAGE, "does not exist"),
    case("lab-kernel-not-a-build", "lab --kernel {tmp} -- true", USAGE, "has no arch/x86/boot/bzImage"),
    case("lab-compare-set-garbage", "lab compare --set lru_gen=banana -- kvmctl experiment", USAGE,
         "--set lru_gen=banana: not a number"),
    case("lab-compare-cap-lacking", "lab compare --kernel stock --set lru_gen=0x000f -- kvmctl experiment --ager mglru",
         UNSUPPORTED, "needs the test_clear_young series", marks=(pytest.mark.lab,)),
    case("unknown-command", "bogus", USAGE, "invalid choice"),
    # agers this host lacks, DAMON owned by someone else
    case("ager-mglru-absent", f"{EXP} --mem 64M --ager mglru", UNSUPPORTED, "MGLRU", marks=(root,)),
    case("ager-page-idle-absent", f"{EXP} --mem 64M --ager page_idle", UNSUPPORTED, "idle page tracking",
         marks=(root,)),
    case("ager-damon-foreign", f"{EXP} --mem 64M --ager damon", UNSUPPORTED, "kdamond kvmctl did not create",
         marks=(root,)),
    # host conditions injected into the kvmctl process
    case("no-dev-kvm", "run --mem 64M", UNSUPPORTED, "/nonexistent/kvm does not exist", prelude=NO_KVM),
    case("no-bcc", "experiment --mem 64M -o {out}", UNSUPPORTED, "BCC", "python3-bpfcc", prelude=NO_BCC,
         marks=(kvm, root)),
    case("no-kernel-headers", "experiment --mem 64M -o {out}", UNSUPPORTED, "no kernel headers",
         "linux-headers", prelude=NO_HEADERS, marks=(kvm, root)),
    case("no-tracefs", "experiment --mem 64M -o {out}", UNSUPPORTED, "tracefs is not mounted", "mount",
         prelude=NO_TRACEFS, marks=(kvm, root)),
    # not root
    case("nobody-run", "run --mem 64M", PERMISSION, "/dev/kvm", "root", nobody=True, marks=(root,)),
    case("nobody-experiment", f"{EXP} --mem 64M", PERMISSION, "cannot create cgroups", "root", nobody=True,
         marks=(root,)),
    case("nobody-experiment-traced", "experiment --mem 64M -o {out}", PERMISSION, "root", nobody=True,
         marks=(root,)),
    case("nobody-damon", f"{EXP} --mem 64M --ager damon", PERMISSION, "damon", "run kvmctl as root", nobody=True,
         marks=(root,)),
    case("nobody-report-unwritable", "report html {reports}/good.json -o /r.html", PERMISSION, "permission denied",
         nobody=True, marks=(root,)),
]
assert len(CASES) >= 40


def _mount(fstype_opts: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", fstype_opts, "kvmctl-test", str(target)], check=True)


def _umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=False)
    target.rmdir()


@pytest.fixture(scope="module")
def workdir():
    """A directory every case (nobody's too) can use; small full and read-only tmpfs mounts inside it."""
    base = Path(tempfile.mkdtemp(prefix="kvmctl-badinput-"))
    base.chmod(0o755)
    mounts = []
    try:
        reports = base / "reports"
        reports.mkdir()
        good = write_report(Report(), reports / "good.json")
        text = good.read_text()
        (reports / "corrupt.json").write_text("{not json")
        (reports / "truncated.json").write_text(text[: len(text) // 2])
        (reports / "future.json").write_text(json.dumps({**json.loads(text), "schema_version": SCHEMA_VERSION + 7}))
        (reports / "other.json").write_text('{"hello": 1}')
        (reports / "link.html").symlink_to("/etc/hostname")
        specs = base / "specs"
        specs.mkdir()
        (specs / "malformed.toml").write_text('mem = "64M"\nvcpus = \n')
        (specs / "binary.toml").write_bytes(b"\xff\xfe\x00")
        (specs / "unknown.toml").write_text('mem = "64M"\nbogus = 1\n')
        (specs / "wrongtype.toml").write_text('vcpus = "two"\n')
        (specs / "ager.toml").write_text('[ager]\nname = "nope"\n')
        if os.geteuid() == 0:
            _mount("size=4m,mode=0777", base / "full")
            mounts.append(base / "full")
            with open(base / "full" / "filler", "wb") as f:  # leave no byte free
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            _mount("ro,size=1m,mode=0777", base / "ro")
            mounts.append(base / "ro")
        yield base
    finally:
        for m in mounts:
            _umount(m)
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def host_before() -> HostState:
    return HostState.capture()


@pytest.fixture(scope="module")
def nobody_can_run_kvmctl(workdir) -> str | None:
    """None if `nobody` can import kvmctl from this tree, else why not (the cases then skip)."""
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return "needs root and setpriv (util-linux) to run kvmctl as nobody"
    probe = subprocess.run(NOBODY + [sys.executable, "-c", "import kvmctl.cli"], capture_output=True, text=True,
                           cwd=workdir, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"nobody cannot import kvmctl from this checkout ({last}): make its directories world-readable"
    return None


@pytest.mark.parametrize("bad", CASES)
def test_bad_input(bad: Bad, workdir: Path, host_before: HostState, request):
    if bad.nobody and (why := request.getfixturevalue("nobody_can_run_kvmctl")):
        pytest.skip(why)
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    run_dir.chmod(0o777)  # nobody writes its private TMPDIR and report here
    fill = {"out": run_dir / "r.json", "full": workdir / "full", "ro": workdir / "ro", "tmp": run_dir,
            "reports": workdir / "reports", "specs": workdir / "specs"}
    args = [a.format(**fill) for a in bad.args]
    env = private_env(run_dir / "tmp")
    (run_dir / "tmp").chmod(0o777)
    command = prelude_cmd(bad.prelude) if bad.prelude else None
    o = run_kvmctl(args, run_dir, prefix=NOBODY if bad.nobody else None, env=env, command=command)
    assert_one_line_error(o, bad.code, *bad.phrases)
    assert_nothing_left(o, run_dir, host_before)
    # Full/read-only file systems: kvmctl's temporary or half-made files are gone too.
    for name in ("full", "ro"):
        fs = workdir / name
        if fs.is_dir():
            assert sorted(p.name for p in fs.iterdir()) in ([], ["filler"]), f"left in {fs}: {list(fs.iterdir())}"


# --- memslots through the Python API (the CLI lays out memslots itself) -------------------------------------


@pytest.fixture
def vm():
    from kvmctl.kvm import Kvm

    try:
        k = Kvm()
    except KvmctlError as err:
        pytest.skip(f"needs /dev/kvm: {err.one_line()}")
    v = k.create_vm()
    yield v
    v.close()
    k.close()


def _anon(size: int):
    from kvmctl.kvm import BackingKind, create_backing

    return create_backing(BackingKind.ANON, size)


@pytest.mark.kvm
@pytest.mark.parametrize("what, place, phrase", [
    ("overlap", [(1, 4 << 30, 4 << 20), (2, (4 << 30) + (2 << 20), 4 << 20)], "overlaps memslot 1"),
    ("misaligned-gpa", [(1, (4 << 30) + 512, 4 << 20)], "not aligned"),
    ("duplicate-id", [(1, 4 << 30, 2 << 20), (1, 8 << 30, 2 << 20)], "already in use"),
    ("slot-id-beyond-kvm", [(40000, 4 << 30, 2 << 20)], "KVM_CAP_NR_MEMSLOTS"),
    ("beyond-max-nr-pages", [(1, 4 << 30, (1 << 43) + (2 << 20))], "KVM's limit of 2147483647 pages"),
    ("slot-larger-than-backing", [(1, 4 << 30, 4 << 20, 2 << 20)], "backing has"),
])
def test_bad_memslots_are_refused_before_the_ioctl(vm, what, place, phrase):
    backings = []
    try:
        with pytest.raises(UsageError) as info:
            for slot, gpa, size, *backing_size in place:
                b = _anon(backing_size[0] if backing_size else size)
                backings.append(b)
                vm.add_memslot(slot, gpa, b, size=size)
        line = info.value.one_line()
        assert phrase in line and line.endswith(")"), line
    finally:
        for b in backings:
            b.close()
