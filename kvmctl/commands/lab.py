"""`kvmctl lab`: run a kvmctl command (or tests) on a chosen kernel with SVM + NPT.

    kvmctl lab                                   # boot the stock kernel, run the lab self-check
    kvmctl lab -- kvmctl info --json             # any kvmctl command, against the lab's KVM
    kvmctl lab --kernel ~/linux -- kvmctl experiment ... -o out/b.json
    kvmctl lab -- pytest tests/kvm -m tdp        # tests, inside the lab
    kvmctl lab compare --kernel stock --kernel ~/linux -- kvmctl experiment ...   # A/B, see kvmctl.lab.compare
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmctl.errors import UsageError
from kvmctl.lab.kernel import resolve_kernel
from kvmctl.lab.prereqs import check_lab, find_vng
from kvmctl.lab.runner import LabResult, LabSpec, resolve_command, run_lab, share_dirs
from kvmctl.units import parse_duration, parse_size


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Everything after -- runs inside the lab; with nothing after it, the lab self-check runs. "
                     "'kvmctl lab compare --help': one experiment on several kernels and settings, side by side.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--kernel", metavar="PATH", help="a bzImage/vmlinuz or a kernel build tree (make bzImage modules)")
    which.add_argument("--stock", action="store_true", help="Debian's stock kernel set up by scripts/setup-lab.sh (default)")
    parser.add_argument("--cpus", type=int, default=2, help="vCPUs of the lab machine (default 2)")
    parser.add_argument("--memory", default="2G", help="memory of the lab machine (default 2G)")
    parser.add_argument("--disk", default="1G",
                        help="RAM-backed ext4 disk for file-backed guests inside the lab, 0 for none (default 1G)")
    parser.add_argument("--swap", default="0", help="RAM-backed swap inside the lab (default 0: none, like most hosts)")
    parser.add_argument("--timeout", default="15m", help="stop the lab after this long (default 15m)")
    parser.add_argument("--stall", default="5m",
                        help="end the command, printing its processes' stacks, once it has written no output for this "
                             "long (default 5m; 0: never)")
    parser.add_argument("--outdir", type=Path, default=Path.cwd(),
                        help="dir shared read-write with the lab and its working dir (default: here); a kvmctl "
                             "output path (-o, --output, --html) elsewhere has its own dir shared too")
    parser.add_argument("--json", action="store_true", help="self-check: print JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the lab kernel's console")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


def _compare(argv: list[str]) -> int:
    from kvmctl.cli import _Parser
    from kvmctl.lab import compare

    parser = _Parser(prog="kvmctl lab compare")
    compare.set_argparser(parser)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.cpus < 1:
        raise UsageError(f"--cpus must be at least 1, got {args.cpus}", "give --cpus 2")
    lab = {"cpus": args.cpus, "memory": parse_size(args.memory, "--memory"),
           "disk": _size_or_zero(args.disk, "--disk"), "timeout": parse_duration(args.timeout, "--timeout"),
           "verbose": args.verbose}
    spec = compare.CompareSpec(args.kernel, args.set, args.repeat, args.outdir, command, lab)
    return compare.run_compare(spec)


def _summary(result: LabResult, release: str) -> str:
    f = result.facts
    boot = f"{result.boot_s:.1f} s" if result.boot_s is not None else "?"
    return (f"kvmctl lab: {release} booted in {boot} (emulated SVM+NPT; kvm_amd npt={f.get('npt')} "
            f"tdp_mmu={f.get('tdp_mmu')}); exit {result.returncode} after {result.wall_s:.1f} s")


def _size_or_zero(text: str, what: str) -> int:
    return 0 if text.strip() == "0" else parse_size(text, what)


def _duration_or_zero(text: str, what: str) -> float:
    return 0.0 if text.strip() == "0" else parse_duration(text, what)


def main(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command[:1] == ["compare"]:
        return _compare(command[1:])
    if args.cpus < 1:
        raise UsageError(f"--cpus must be at least 1, got {args.cpus}", "give --cpus 2")
    if args.json and command:
        raise UsageError("--json applies to the self-check only", "pass --json to the command after -- instead")
    stall = _duration_or_zero(args.stall, "--stall")
    share = share_dirs(command, args.outdir)  # before booting: an output the lab cannot keep is refused now
    kernel = check_lab(resolve_kernel(None if args.stock else args.kernel))
    for d in share:
        print(f"kvmctl lab: sharing {d} read-write as well: the command writes there", file=sys.stderr)
    python = sys.executable
    if not command and args.json:
        command = ["python", "-m", "kvmctl.lab.selfcheck", "--json"]
    spec = LabSpec(
        kernel=kernel,
        command=resolve_command(command, python),
        cpus=args.cpus,
        memory=parse_size(args.memory, "--memory"),
        disk=_size_or_zero(args.disk, "--disk"),
        swap=_size_or_zero(args.swap, "--swap"),
        timeout=parse_duration(args.timeout, "--timeout"),
        outdir=args.outdir,
        python=python,
        verbose=args.verbose,
        share=tuple(share),
        stall=stall,
    )
    result = run_lab(spec, find_vng())
    print(_summary(result, kernel.release), file=sys.stderr)
    return result.returncode
