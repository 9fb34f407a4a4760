"""Thin entry point: registers subcommands and turns errors into one line.

Each subcommand is a module with ``set_argparser(parser)`` and
``main(args) -> int`` (the damo shape). Modules are imported only when their
command runs, so ``kvmctl info`` works on a host without BCC.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Iterator

from kvmctl import __version__, cleanup
from kvmctl.errors import ExitCode, Interrupted, KvmctlError
from kvmctl.vocab import dump_stacks_on_signal

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("kvmctl.commands.info", "what this host offers for aging work (KVM, MMU, BPF, agers)"),
    "run": ("kvmctl.commands.run", "run a touch payload in a fresh VM and print its figures"),
    "experiment": ("kvmctl.commands.experiment", "run an aging experiment: VM + agers + probes -> report"),
    "watch": ("kvmctl.commands.watch", "how the host ages the memory of a running VM kvmctl did not create"),
    "report": ("kvmctl.commands.report", "show, render, compare or export experiment reports"),
    "lab": ("kvmctl.commands.lab", "run a kvmctl command on a chosen kernel in an emulated SVM+NPT machine"),
}


DESCRIPTION = ("kvmctl measures how a Linux host's page aging treats KVM guest memory: it runs real VMs whose "
               "memory accesses are known exactly, makes the host age that memory (memcg reclaim, MGLRU, idle page "
               "tracking, DAMON, or only watching), traces KVM's aging paths with BPF and scores the host's "
               "decisions against what the guest really touched.")
EPILOG = "'kvmctl COMMAND --help' describes each command. Start with 'kvmctl info', then 'kvmctl experiment'."


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in our one-line style and never guesses a flag from its prefix."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --epochs must not become --epochs-per-pass
        super().__init__(*args, **kwargs)
        self.help_hint = self.prog  # whose --help the error points to

    def error(self, message: str):  # type: ignore[override]
        self.exit(int(ExitCode.USAGE), f"kvmctl: error: {message} (see '{self.help_hint} --help')\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="kvmctl", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"kvmctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    words = [a for a in argv if not a.startswith("-")]
    wanted = words[0] if words else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module that will run
            mod = importlib.import_module(module)
            mod.set_argparser(p)
            p.set_defaults(_main=mod.main)
            # The top level reports a command's unknown flags: point at that command's (or action's) help.
            parser.help_hint = " ".join(["kvmctl", *words[:2 if _has_action(p, words[1:2]) else 1]])
    return parser


def _has_action(parser: argparse.ArgumentParser, word: list[str]) -> bool:
    """Whether ``word`` names one of the command's own actions (``report show``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return bool(word) and any(word[0] in a.choices for a in subs)


# Signals that arrived inside signals_deferred(), oldest first; None outside it.
_deferred: list[int] | None = None


def _raise_interrupted(signum, _frame):
    if _deferred is not None:
        _deferred.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Run a block that a SIGINT/SIGTERM must not cut in half (cleanup, writing a report).

    A signal inside the block is recorded in the yielded list instead of being
    raised; leaving the block raises :class:`Interrupted` for the first one,
    unless another exception is already on its way out. A pure-Python flag,
    not a signal mask: any thread may receive the signal.
    """
    global _deferred
    outer = _deferred
    mine: list[int] = [] if outer is None else outer
    _deferred = mine
    try:
        yield mine
    finally:
        _deferred = outer
    if outer is None and mine:
        raise Interrupted(mine[0])


@contextlib.contextmanager
def signals_allowed(deferred: list[int]) -> Iterator[None]:
    """Inside signals_deferred(): a block that signals interrupt again (the long-running part).

    A signal recorded before the block raises at once, so none is lost.
    """
    global _deferred
    _deferred = None
    try:
        if deferred:
            raise Interrupted(deferred.pop(0))
        yield
    finally:
        _deferred = deferred


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    dump_stacks_on_signal()
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not getattr(args, "_main", None):
            parser.print_help()
            return int(ExitCode.USAGE)
        return int(args._main(args) or 0)
    except KvmctlError as err:
        print(f"kvmctl: error: {err.one_line()}", file=sys.stderr)
        return int(err.exit_code)
    except BrokenPipeError:
        return int(ExitCode.OK)
    except Exception as err:  # a bug: still one line, the traceback only on request
        if os.environ.get("KVMCTL_DEBUG"):
            raise
        print(f"kvmctl: internal error: {type(err).__name__}: {err} "
              "(a kvmctl bug: rerun with KVMCTL_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return int(ExitCode.FAILURE)
    finally:
        # Undo every host change still registered (cgroups, limits, BPF), on
        # every exit path; a second signal during this must not cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for failure in cleanup.run_all():
            print(f"kvmctl: warning: cleanup of {failure}", file=sys.stderr)
