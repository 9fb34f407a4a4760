"""kvmctl.cleanup: LIFO order, run-once, failures collected, fork safety."""

from __future__ import annotations

import os

import pytest

from kvmctl import cleanup


@pytest.fixture(autouse=True)
def empty_stack():
    cleanup.run_all()
    yield
    assert cleanup.pending() == []


def test_runs_newest_first_and_only_once():
    order: list[str] = []
    cleanup.register("a", lambda: order.append("a"))
    cleanup.register("b", lambda: order.append("b"))
    assert cleanup.pending() == ["a", "b"]
    assert cleanup.run_all() == []
    assert cleanup.run_all() == []
    assert order == ["b", "a"]


def test_failures_are_collected_and_the_rest_still_runs():
    order: list[str] = []

    def boom():
        raise OSError("EBUSY")

    cleanup.register("first", lambda: order.append("first"))
    cleanup.register("broken", boom)
    cleanup.register("last", lambda: order.append("last"))
    failures = cleanup.run_all()
    assert order == ["last", "first"]
    assert [f.name for f in failures] == ["broken"]
    assert "EBUSY" in str(failures[0])


def test_release_runs_early_once_and_unregisters():
    calls: list[int] = []
    handle = cleanup.register("x", lambda: calls.append(1))
    assert handle.pending
    handle.release()
    handle.release()
    assert calls == [1] and not handle.pending
    assert cleanup.pending() == []
    cleanup.run_all()
    assert calls == [1]


def test_release_propagates_the_error_to_its_caller():
    def boom():
        raise ValueError("nope")

    handle = cleanup.register("x", boom)
    with pytest.raises(ValueError):
        handle.release()
    assert cleanup.run_all() == []  # it ran (and failed) once; not again


def test_discard_unregisters_without_running():
    calls: list[int] = []
    handle = cleanup.register("x", lambda: calls.append(1))
    handle.discard()
    cleanup.run_all()
    assert calls == []


def test_actions_registered_during_run_all_also_run():
    order: list[str] = []
    cleanup.register("outer", lambda: cleanup.register("inner", lambda: order.append("inner")))
    cleanup.run_all()
    assert order == ["inner"]


def test_exception_path_runs_cleanup():
    undone: list[str] = []
    with pytest.raises(RuntimeError):
        try:
            cleanup.register("knob", lambda: undone.append("knob"))
            raise RuntimeError("experiment failed")
        finally:
            cleanup.run_all()
    assert undone == ["knob"]


def test_forked_child_never_runs_the_parents_actions(tmp_path):
    marker = tmp_path / "ran"
    cleanup.register("parent only", lambda: marker.write_text(str(os.getpid())))
    pid = os.fork()
    if pid == 0:  # child
        try:
            cleanup.run_all()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert not marker.exists()
    cleanup.run_all()
    assert marker.read_text() == str(os.getpid())


def test_an_exception_raised_between_actions_does_not_stop_the_rest(monkeypatch):
    """A signal handler raising while run_all is between two actions (simulated on _take)."""
    order: list[str] = []
    cleanup.register("a", lambda: order.append("a"))
    b = cleanup.register("b", lambda: order.append("b"))
    real_take = cleanup.Handle._take
    raised = []

    def take_once_interrupted(self):
        if self is b and not raised:
            raised.append(True)
            raise KeyboardInterrupt
        return real_take(self)

    monkeypatch.setattr(cleanup.Handle, "_take", take_once_interrupted)
    failures = cleanup.run_all()
    assert order == ["b", "a"]
    assert len(failures) == 1 and isinstance(failures[0].error, KeyboardInterrupt)
