"""`kvmctl run`'s stopping rule, time left and progress text (pure logic)."""

from __future__ import annotations

import pytest

from kvmctl.commands.runview import Limits, progress_text


def test_epochs_limit():
    lim = Limits(10, None)
    assert not lim.done(9, 100.0) and lim.done(10, 0.1)
    assert lim.remaining(0, 0.0) is None  # no epoch yet: no rate to extrapolate
    assert lim.remaining(4, 2.0) == pytest.approx(3.0)  # 0.5 s per epoch, 6 to go
    assert lim.fraction(4, 2.0) == pytest.approx(0.4)


def test_duration_limit_runs_at_least_one_epoch():
    lim = Limits(None, 5.0)
    assert not lim.done(0, 9.0)  # an epoch slower than the duration still gets measured
    assert not lim.done(3, 4.9) and lim.done(3, 5.0)
    assert lim.remaining(3, 1.5) == pytest.approx(3.5)
    assert lim.remaining(3, 7.0) == 0.0
    assert lim.fraction(3, 2.5) == pytest.approx(0.5) and lim.fraction(3, 9.0) == 1.0


def test_both_limits_the_sooner_wins():
    lim = Limits(100, 10.0)
    assert lim.remaining(50, 1.0) == pytest.approx(1.0)  # 50 more epochs at 20 ms each beat 9 s
    assert lim.remaining(1, 1.0) == pytest.approx(9.0)
    assert lim.fraction(50, 1.0) == pytest.approx(0.5)


def test_progress_text():
    assert progress_text(Limits(None, 5.0), 12, 2.0) == "12 epochs, 2.0 s elapsed, 3.0 s left"
    assert progress_text(Limits(10, None), 1, 0.5) == "1 epoch, 0.5 s elapsed, 4.5 s left"
    assert progress_text(Limits(10, None), 0, 0.0) == "0 epochs, 0.0 s elapsed"
    assert progress_text(Limits(None, 600.0), 3, 30.0) == "3 epochs, 30.0 s elapsed, 9 min 30 s left"
