"""kvmctl.cli's signal handling as pure logic: deferral, re-raising, and main()'s one-line error.

These run in the pytest process with real signals (os.kill of ourselves); the
handlers kvmctl.cli installs are put back afterwards.
"""

from __future__ import annotations

import os
import signal

import pytest

from kvmctl import cli
from kvmctl.errors import ExitCode, Interrupted


@pytest.fixture(autouse=True)
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, cli._raise_interrupted)
    signal.signal(signal.SIGTERM, cli._raise_interrupted)
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    assert cli._deferred is None


def test_signal_outside_any_block_raises_at_once():
    with pytest.raises(Interrupted) as info:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.5)  # give the handler a bytecode boundary
    assert info.value.exit_code == ExitCode.TERMINATED


def test_deferred_block_finishes_then_raises_the_first_signal():
    done = []
    with pytest.raises(Interrupted) as info:
        with cli.signals_deferred() as late:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("cleanup ran to the end")
            assert late == [signal.SIGINT, signal.SIGTERM]
    assert done and info.value.signum == signal.SIGINT
    assert info.value.exit_code == ExitCode.INTERRUPTED


def test_deferred_block_cleared_by_its_owner_does_not_raise():
    with cli.signals_deferred() as late:
        os.kill(os.getpid(), signal.SIGINT)
        late.clear()


def test_exception_leaving_a_deferred_block_is_not_replaced():
    with pytest.raises(ValueError):
        with cli.signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the error already on its way out")


def test_allowed_block_raises_a_recorded_signal_first_and_new_ones_at_once():
    with cli.signals_deferred() as late:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Interrupted) as info:
            with cli.signals_allowed(late):
                pytest.fail("the recorded signal must raise before the block runs")
        assert info.value.signum == signal.SIGTERM and late == []
        with pytest.raises(Interrupted):
            with cli.signals_allowed(late):
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0.5)
        os.kill(os.getpid(), signal.SIGINT)  # deferred again after the allowed block
        assert late == [signal.SIGINT]
        late.clear()


def test_main_prints_one_line_and_undoes_what_it_registered(capsys, tmp_path):
    from kvmctl import cleanup

    undone = []
    cleanup.register("test action", lambda: undone.append(True))
    code = cli.main(["report", "show", str(tmp_path / "none.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ExitCode.USAGE
    assert len(err) == 1 and err[0].startswith("kvmctl: error: report ") and err[0].endswith(")")
    assert undone == [True] and cleanup.pending() == []


def test_release_cut_short_by_a_signal_stays_pending_in_its_place():
    """cgroup.remove() interrupted mid-way (EBUSY retries) must still be finished by run_all()."""
    from kvmctl import cleanup

    order = []
    cleanup.register("older", lambda: order.append("older"))
    state = {"interrupt": True}

    def remove():
        if state.pop("interrupt", False):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.5)
        order.append("removed")

    handle = cleanup.register("remove cgroup", remove)
    cleanup.register("newer", lambda: order.append("newer"))
    with pytest.raises(Interrupted):
        handle.release()
    assert handle.pending and cleanup.pending() == ["older", "remove cgroup", "newer"]
    assert cleanup.run_all() == []
    assert order == ["newer", "removed", "older"]
