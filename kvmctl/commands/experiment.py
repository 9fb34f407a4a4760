"""`kvmctl experiment`: VM + ager passes + probes -> a versioned JSON report."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

from kvmctl import cleanup
from kvmctl.agers.memcg import TARGET_OPTIONS
from kvmctl.commands.flags import EPOCH_TIMEOUT, add_flags, add_vm_shape, flag_hints, print_report, vm_shape_keys
from kvmctl.errors import Interrupted, UsageError
from kvmctl.experiment.spec import ExperimentSpec, parse_ager_options

# Flags that set the spec field of the same name; None: not given (the TOML file or the default holds).
_FLAG_KEYS = vm_shape_keys() + ("ager", "passes", "mode", "epochs_per_pass", "settle", "settle_runs", "interval",
                                "epoch_timeout", "repeat", "vm_nice", "vm_cpus", "ager_cpus", "nested", "populate", "trace")


def set_argparser(parser: argparse.ArgumentParser) -> None:
    d = ExperimentSpec()
    defaults = asdict(d)
    parser.add_argument("--spec", metavar="TOML", help="read the experiment from a TOML file (flags override it)")
    g = add_vm_shape(parser, defaults, fill=False)
    g.add_argument("--no-populate", dest="populate", action="store_false", default=None,
                   help="skip the initial seq write + fsync that makes every page resident and clean")
    a = parser.add_argument_group("aging")
    a.add_argument("--ager", help=f"memcg|mglru|page_idle|damon|passive (default {d.ager})")
    a.add_argument("--ager-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="ager option, e.g. squeeze=0.5, squeeze_guest=0.5, target_bytes=..., steps=8")
    a.add_argument("--squeeze", type=float, metavar="FRACTION",
                   help="memcg: every pass squeezes the cgroup to its usage after populating minus this fraction of "
                        "the guest's size, so each pass reclaims what the guest faulted in since (0..1, default "
                        f"{d.ager_options['squeeze_guest']})")
    a.add_argument("--passes", type=int, help=f"ager passes (default {d.passes})")
    a.add_argument("--mode", choices=("concurrent", "between"),
                   help=f"passes run while the guest touches memory, or between epochs (default {d.mode})")
    a.add_argument("--epochs-per-pass", type=int, help="--mode between: epochs before each pass")
    a.add_argument("--vm-nice", type=int, help="nice value of the VM process, so a loaded host does not starve "
                   f"the vCPUs during a pass (default {d.vm_nice})")
    a.add_argument("--vm-cpus", metavar="CPULIST", help="CPUs of the VM process, like 1-3; auto: all but the "
                   f"ager's when every vCPU keeps a CPU; all: unpinned (default {d.vm_cpus})")
    a.add_argument("--ager-cpus", metavar="CPULIST", help="CPUs of kvmctl itself, where reclaim runs; auto: the "
                   f"first CPU when the VM is split off; all: unpinned (default {d.ager_cpus})")
    a.add_argument("--nested", action="store_true", default=None,
                   help="nested-VM fallback on SVM hosts: an L2 guest touches the memory after pass 0 "
                        "(needs --mode between --pattern seq)")
    a.add_argument("--settle-runs", type=int, metavar="N",
                   help="--mode concurrent: before each pass the guest runs its epoch once whole, then N more times "
                        f"(default {d.settle_runs})")
    a.add_argument("--settle", help="--mode concurrent: then it runs at least this long before the pass "
                                    f"(default {d.settle})")
    t = parser.add_argument_group("tracing and output")
    t.add_argument("--no-trace", dest="trace", action="store_false", default=None, help="attach no BPF programs")
    t.add_argument("--interval", help=f"aging time-series bucket (default {d.interval})")
    add_flags(t, (EPOCH_TIMEOUT,), defaults, fill=False)
    t.add_argument("--repeat", type=int, help="run the experiment N times; the report carries every run's figures")
    t.add_argument("--output", "-o", default="report.json", help="report file (default report.json)")
    t.add_argument("--json", action="store_true", help="print the report JSON instead of the text summary")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress messages")


def spec_from_args(args) -> ExperimentSpec:
    spec = ExperimentSpec.from_toml(args.spec) if args.spec else ExperimentSpec()
    for key in _FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            setattr(spec, key, value)
    if args.mode is None and not args.spec and spec.ager in ("mglru", "page_idle"):
        # these agers mark or age, then read back after an epoch: the guest runs between passes
        # (as the KVM selftest access_tracking_perf_test drives MGLRU), not during them
        spec.mode = "between"
    if spec.nested:  # the nested payload touches in seq order, between passes
        spec.mode = args.mode or ("between" if not args.spec else spec.mode)
        spec.pattern = args.pattern or ("seq" if not args.spec else spec.pattern)
    if args.ager and not args.spec and args.ager != "memcg":
        spec.ager_options = {}
    if args.ager_opt:
        given = parse_ager_options(args.ager_opt)
        kept = spec.ager_options
        if spec.ager == "memcg" and any(k in given for k in TARGET_OPTIONS):  # a target given replaces the default's
            kept = {k: v for k, v in kept.items() if k not in TARGET_OPTIONS}
        spec.ager_options = {**kept, **given}
    if args.squeeze is not None:
        if spec.ager != "memcg":
            raise UsageError(f"--squeeze sets the memcg ager's target, and the ager is {spec.ager}",
                             "drop --squeeze or use --ager memcg")
        if not 0 < args.squeeze < 1:
            raise UsageError(f"--squeeze {args.squeeze:g} is not a fraction between 0 and 1",
                             "give the fraction of the guest's size each pass takes away, e.g. --squeeze 0.5")
        spec.ager_options = {k: v for k, v in spec.ager_options.items() if k not in TARGET_OPTIONS}
        spec.ager_options["squeeze_guest"] = args.squeeze
    spec.validate()
    return spec


def _progress(quiet: bool):
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def main(args) -> int:
    with flag_hints():
        return _run(args)


def _run(args) -> int:
    from kvmctl.cli import signals_allowed, signals_deferred  # here: kvmctl.cli imports this module

    spec = spec_from_args(args)
    from kvmctl.experiment.session import preflight

    preflight(spec)  # a run this host refuses never touches the output path
    progress = _progress(args.quiet)
    runs = []
    error: BaseException | None = None
    # The report path is decided. A SIGINT/SIGTERM from here on waits in `late`
    # except during the runs themselves, so cleanup and the report write are
    # never cut in half and every signal leaves a report marked incomplete.
    with signals_deferred() as late:
        from kvmctl.report.output import check_writable

        check_writable(args.output)
        progress(f"the report goes to {args.output}")
        from kvmctl.experiment.runner import Experiment
        from kvmctl.report.figures import headline_figures
        from kvmctl.report.files import write_report

        for i in range(spec.repeat):
            if spec.repeat > 1:
                progress(f"repeat {i + 1}/{spec.repeat}")
            exp = Experiment(spec, command_line=["kvmctl", *sys.argv[1:]], progress=progress)
            try:
                with signals_allowed(late):
                    exp.run()
            except BaseException as err:  # the partial report is still written below
                error = err
            cleanup.run_all()  # nothing of this run outlives it, whatever happened
            if error is not None and not isinstance(error, Interrupted) and not exp.started and not runs:
                raise error  # refused before it measured anything: the output path keeps what it held
            if late and error is None:
                error = Interrupted(late.pop(0))
            runs.append(exp.report)
            if error:
                break
        report = runs[-1]
        if spec.repeat > 1:
            report.repeats = [headline_figures(r) for r in runs]
        _mark_interrupted(report, error)
        path = write_report(report, args.output)
        if late and error is None:  # the signal came while the report was being written
            error = Interrupted(late[0])
            _mark_interrupted(report, error)
            path = write_report(report, args.output)
        late.clear()  # `error` carries it
        print_report(report, args.json, error)
        progress(f"report written to {path}" + ("" if report.complete else " (incomplete)"))
    if error:
        raise error
    return 0


def _mark_interrupted(report, error: BaseException | None) -> None:
    """A run a signal ended is incomplete, even if it ended after its last measurement."""
    if isinstance(error, Interrupted):
        report.complete = False
        report.incomplete_reason = report.incomplete_reason or error.one_line()
