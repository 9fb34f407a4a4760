"""`kvmctl lab compare`: one experiment on several kernels and kernel settings, side by side.

    kvmctl lab compare --kernel stock --kernel TREE -- kvmctl experiment --ager mglru ...
    kvmctl lab compare --kernel TREE --set lru_gen=0x0007,0x000f -- kvmctl experiment ...
    kvmctl lab compare --kernel TREE --set kvm.test_clear_young_nested=v1,fixed -- kvmctl experiment --nested ...

The sides are every kernel crossed with every combination of the ``--set``
values. Each kernel boots once; inside it every setting is written, checked
by reading it back, and the experiment runs with ``--repeat N`` into
``<outdir>/<side>.json``. The first side is the baseline of the comparison,
written as text (``compare.txt``, also printed), JSON (``compare.json``) and
one HTML page with every side's plots (``compare.html``). A setting that
needs the test_clear_young series is left out, with a note, for a kernel
whose System.map shows it lacks the series (``--kernel stock --kernel TREE
--set lru_gen=0x0007,0x000f`` runs stock once and TREE twice); any other
setting a kernel lacks stops the comparison inside the lab, with the reason.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import KvmctlError, UnsupportedError, UsageError
from kvmctl.lab.kernel import KernelSource, LabKernel, resolve_kernel
from kvmctl.lab.prereqs import check_lab, find_vng
from kvmctl.lab.runner import LabSpec, run_lab
from kvmctl.probe.kvm import SYS_MODULE
from kvmctl.probe.memory import LRU_GEN_ENABLED, LRU_GEN_SECONDARY_YOUNG, parse_lru_gen_features

HOOK_SYMBOL = "kvm_arch_test_clear_young"
EXIT_UNSUPPORTED = 3  # the exit status of a setting the kernel refused inside the lab
_NAME_RE = re.compile(r"[^A-Za-z0-9_.=+-]+")


@dataclass(frozen=True)
class Knob:
    """A kernel setting a side may change: its name on the command line and its sysfs file."""

    name: str
    path: Path
    numeric: bool  # compare values as numbers (0x7 == 0x0007)

    def needs_hook(self, value: str) -> bool:
        """Whether this value needs the test_clear_young series."""
        if self.name == "lru_gen":
            return bool(parse_lru_gen_features(value) & LRU_GEN_SECONDARY_YOUNG)
        return self.name == "kvm.test_clear_young_nested"


def knob(name: str) -> Knob:
    if name == "lru_gen":
        return Knob(name, LRU_GEN_ENABLED, True)
    module, dot, param = name.partition(".")
    if dot and module and param and "/" not in name:
        return Knob(name, SYS_MODULE / module / "parameters" / param, False)
    raise UsageError(f"--set {name}: unknown setting", "use lru_gen=V1,V2 or MODULE.PARAM=V1,V2 "
                                                       "(e.g. kvm.test_clear_young_nested=v1,fixed)")


@dataclass(frozen=True)
class Setting:
    knob: Knob
    value: str


@dataclass(frozen=True)
class Side:
    name: str
    kernel: LabKernel
    settings: tuple[Setting, ...]

    @property
    def report(self) -> str:
        return f"{self.name}.json"


def parse_sets(items: list[str]) -> list[list[Setting]]:
    """``--set KNOB=V1,V2`` flags -> every combination of their values (one empty one without flags)."""
    axes = []
    for item in items:
        name, eq, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not vals:
            raise UsageError(f"--set {item!r} is not KNOB=V1[,V2...]", "write --set lru_gen=0x0007,0x000f")
        k = knob(name.strip())
        if k.numeric:
            for v in vals:
                try:
                    int(v, 0)
                except ValueError:
                    raise UsageError(f"--set {k.name}={v}: not a number", "write it like 0x000f") from None
        axes.append([Setting(k, v) for v in vals])
    return [list(c) for c in itertools.product(*axes)]


def kernel_label(spec: str, kernel: LabKernel) -> str:
    if spec == "stock":
        return "stock"
    path = Path(spec)
    return path.name if kernel.source is KernelSource.TREE else path.stem


def side_name(label: str, settings: list[Setting]) -> str:
    return _NAME_RE.sub("_", "+".join([label, *(f"{s.knob.name}={s.value}" for s in settings)]))


def system_map(kernel: LabKernel) -> Path | None:
    """The kernel's System.map, where the lab can find one."""
    candidates = [kernel.tree / "System.map"] if kernel.tree else []
    candidates.append(kernel.image.parent / f"System.map-{kernel.release}")
    return next((p for p in candidates if p.is_file()), None)


def has_symbol(path: Path, symbol: str) -> bool:
    suffix = f" {symbol}\n".encode()
    with path.open("rb") as f:
        return any(line.endswith(suffix) for line in f)


def lacking(side: Side) -> str | None:
    """Why this side's kernel visibly lacks one of its settings (from its System.map), or None."""
    needs = [s for s in side.settings if s.knob.needs_hook(s.value)]
    smap = system_map(side.kernel) if needs else None
    if smap is not None and not has_symbol(smap, HOOK_SYMBOL):
        s = needs[0]
        return (f"{s.knob.name}={s.value} needs the test_clear_young series, which kernel {side.kernel.release} "
                f"lacks (no {HOOK_SYMBOL} in {smap})")
    return None


def check_experiment(args: list[str]) -> None:
    """Parse the experiment's arguments as `kvmctl experiment` will, so a typo fails before a boot."""
    from kvmctl.cli import _Parser
    from kvmctl.commands import experiment
    from kvmctl.commands.flags import flag_hints

    parser = _Parser(prog="kvmctl experiment")
    experiment.set_argparser(parser)
    with flag_hints():
        experiment.spec_from_args(parser.parse_args(args))


def experiment_args(command: list[str]) -> list[str]:
    """The arguments after ``kvmctl experiment``; compare owns --output and --repeat."""
    if command[:2] != ["kvmctl", "experiment"]:
        raise UsageError("lab compare runs an experiment: the command must be 'kvmctl experiment ...'",
                         "write: kvmctl lab compare --kernel K ... -- kvmctl experiment --ager mglru ...")
    args = command[2:]
    for flag in ("-o", "--output", "--repeat", "--json"):
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise UsageError(f"lab compare sets {flag} itself", f"drop {flag} from the experiment's arguments "
                                                                "(use compare's --repeat and --outdir)")
    return args


def uses_mglru(args: list[str]) -> bool:
    return any(a in ("--ager=mglru",) or (a == "--ager" and nxt == "mglru")
               for a, nxt in zip(args, [*args[1:], ""]))


def side_script(sides: list[Side], args: list[str], python: str, repeat: int) -> str:
    """The shell script one lab boot runs: each side's settings, checked, then its experiment."""
    lines = ["#!/bin/bash", "# written by kvmctl lab compare; runs inside the lab", "status=0"]
    for side in sides:
        extra = []
        if uses_mglru(args) and any(s.knob.name == "lru_gen" for s in side.settings):
            extra = ["--ager-opt", "test_clear_young=keep"]  # the side chose the cap itself
        lines.append(f"echo 'kvmctl lab compare: side {side.name}' >&2")
        for s in side.settings:
            path, value = shlex.quote(str(s.knob.path)), shlex.quote(s.value)
            if s.knob.numeric:
                check = f'[ $(( $(cat {path}) )) -eq $(( {value} )) ]'
            else:
                check = f'[ "$(cat {path})" = {value} ]'
            lines.append(f"if ! {{ echo {value} > {path} && {check}; }} 2>/dev/null; then")
            lines.append(f"  echo 'kvmctl: error: the lab kernel does not take {s.knob.name}={s.value} "
                         f"({s.knob.path} reads '\"$(cat {path} 2>/dev/null || echo nothing)\"') "
                         "(compare that setting on a kernel that has it)' >&2")
            lines.append(f"  exit {EXIT_UNSUPPORTED}")
            lines.append("fi")
        argv = [python, "-m", "kvmctl", "experiment", *args, *extra, "--repeat", str(repeat), "-o", side.report]
        lines.append(f"{shlex.join(argv)} || status=$?")
    lines.append("exit $status")
    return "\n".join(lines) + "\n"


@dataclass
class CompareSpec:
    kernels: list[str]
    sets: list[str]
    repeat: int
    outdir: Path
    command: list[str]
    lab: dict  # cpus, memory, disk, swap, timeout, verbose for every boot


def plan(spec: CompareSpec) -> list[list[Side]]:
    """Sides grouped by kernel (one boot each), every input checked before anything boots."""
    if spec.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {spec.repeat}", "give --repeat 3")
    check_experiment(experiment_args(spec.command))
    combos = parse_sets(spec.sets)
    kernels = spec.kernels or ["stock"]
    if len(kernels) != len(set(kernels)):
        raise UsageError("the same --kernel is given twice", "give each kernel once; --set makes the variants")
    groups, names, skipped = [], set(), []
    for k in kernels:
        kernel = check_lab(resolve_kernel(k))
        label = kernel_label(k, kernel)
        group = []
        for c in combos:
            side = Side(side_name(label, c), kernel, tuple(c))
            if side.name in names:
                raise UsageError(f"two sides are both named {side.name}", "give kernels with different names")
            why = lacking(side)
            if why:
                skipped.append((side.name, why))
                continue
            names.add(side.name)
            group.append(side)
        if group:
            groups.append(group)
    if len(names) < 2:
        if skipped:
            raise UnsupportedError(f"fewer than two sides left: {skipped[0][1]}",
                                   "compare that setting on a kernel built with scripts/build-lab-kernel.sh "
                                   "--patches kernels/test-clear-young")
        raise UsageError("a comparison needs two sides or more",
                         "give a second --kernel or values to --set (e.g. --set lru_gen=0x0007,0x000f)")
    for name, why in skipped:  # the comparison goes ahead without them
        print(f"kvmctl lab compare: leaving out side {name}: {why}", file=sys.stderr)
    return groups


def run_compare(spec: CompareSpec, python: str = sys.executable) -> int:
    from kvmctl.report.diff import diff_json, render_diff
    from kvmctl.report.files import load_report
    from kvmctl.report.html_diff import render_html_diff
    from kvmctl.report.output import write_atomic

    groups = plan(spec)
    args = experiment_args(spec.command)
    outdir = spec.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    vng = find_vng()
    failed: list[str] = []
    for group in groups:
        script = outdir / f".compare-{group[0].name}.sh"
        write_atomic(script, side_script(group, args, python, spec.repeat).encode())
        print(f"kvmctl lab compare: booting {group[0].kernel.release} for "
              f"{', '.join(s.name for s in group)}", file=sys.stderr)
        result = run_lab(LabSpec(kernel=group[0].kernel, command=["bash", str(script)], outdir=outdir,
                                 python=python, **spec.lab), vng)
        script.unlink(missing_ok=True)
        if result.returncode == EXIT_UNSUPPORTED:
            raise UnsupportedError(f"kernel {group[0].kernel.release} refused a setting (see above)",
                                   "drop that --set value for this kernel")
        failed += [s.name for s in group if not (outdir / s.report).is_file()]
    sides = [s for g in groups for s in g]
    reports = [(s.report, load_report(outdir / s.report)) for s in sides if s.name not in failed]
    if len(reports) >= 2:
        text = render_diff(reports)
        write_atomic(outdir / "compare.txt", text.encode())
        write_atomic(outdir / "compare.json", json.dumps(diff_json(reports), indent=1).encode())
        write_atomic(outdir / "compare.html", render_html_diff(reports).encode())
        sys.stdout.write(text)
        print(f"kvmctl lab compare: wrote {len(reports)} reports, compare.txt, compare.json and compare.html "
              f"in {outdir}", file=sys.stderr)
    if failed:
        raise KvmctlError(f"no report from side(s) {', '.join(failed)}: their experiment failed",
                          "see its error above; the other sides' reports are kept")
    return 0


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("run the same kvmctl experiment on several kernels and kernel settings in the lab, "
                          "keep every report and write their comparison (text, JSON, HTML)")
    parser.add_argument("--kernel", action="append", default=[], metavar="PATH|stock",
                        help="a kernel to compare (repeat it; default: stock)")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=V1,V2",
                        help="a setting to vary on every kernel: lru_gen=0x0007,0x000f or MODULE.PARAM=V1,V2 "
                             "(repeat it: sides are every combination)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side, for the noise rule (default 3)")
    parser.add_argument("--outdir", type=Path, default=Path("out/compare"),
                        help="where the reports and the comparison go (default out/compare)")
    parser.add_argument("--timeout", default="60m", help="stop one kernel's boot after this long (default 60m)")
    parser.add_argument("--cpus", type=int, default=2, help="vCPUs of the lab machine (default 2)")
    parser.add_argument("--memory", default="2G", help="memory of the lab machine (default 2G)")
    parser.add_argument("--disk", default="1G", help="RAM-backed ext4 disk for file-backed guests (default 1G)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the lab kernels' consoles")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- kvmctl experiment [ARGS...]")
