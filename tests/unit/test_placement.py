"""CPU placement of the VM and the ager: cpulist parsing and the auto split."""

from __future__ import annotations

import os

import pytest

from kvmctl.errors import UsageError
from kvmctl.placement import CpuPlacement, format_cpu_list, parse_cpu_list, pinned, resolve_placement


@pytest.mark.parametrize("text,cpus", [("0", {0}), ("1-3", {1, 2, 3}), ("0,2-3", {0, 2, 3}), (" 5 , 7 ", {5, 7}),
                                       ("2-2", {2}), ("3,1", {1, 3})])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "1,,2", "0x1", "1.5"])
def test_parse_cpu_list_errors(text):
    with pytest.raises(UsageError) as info:
        parse_cpu_list(text, "--vm-cpus")
    assert info.value.message.startswith("--vm-cpus ") and info.value.hint


@pytest.mark.parametrize("cpus,text", [({0}, "0"), ({0, 1, 2, 5}, "0-2,5"), ({1, 3, 4, 5, 7}, "1,3-5,7")])
def test_format_cpu_list_round_trips(cpus, text):
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == cpus


FOUR = frozenset({0, 1, 2, 3})


def test_auto_gives_the_ager_the_first_cpu_and_the_vm_the_rest():
    assert resolve_placement("auto", "auto", 1, FOUR) == CpuPlacement(frozenset({1, 2, 3}), frozenset({0}))
    assert resolve_placement("auto", "auto", 3, frozenset({2, 5, 6, 7})).ager == {2}


def test_auto_does_not_stack_vcpus_to_free_a_cpu():
    placement = resolve_placement("auto", "auto", 2, frozenset({0, 1}))
    assert placement.vm is None and placement.ager is None
    assert "2 vCPU(s) and 2 CPU(s)" in placement.why and "unpinned" in placement.describe()
    assert resolve_placement("auto", "auto", 1, frozenset({4})).vm is None


def test_one_explicit_side_leaves_the_rest_to_the_other():
    assert resolve_placement("3", "auto", 1, FOUR) == CpuPlacement(frozenset({3}), frozenset({0, 1, 2}))
    assert resolve_placement("auto", "0-1", 1, FOUR) == CpuPlacement(frozenset({2, 3}), frozenset({0, 1}))
    assert resolve_placement("0-3", "auto", 1, FOUR) == CpuPlacement(frozenset(FOUR), None)  # nothing left
    assert resolve_placement("all", "auto", 1, FOUR) == CpuPlacement(None, None)
    assert resolve_placement("all", "all", 1, FOUR) == CpuPlacement(None, None)


def test_cpus_outside_the_affinity_are_refused_with_the_allowed_list():
    with pytest.raises(UsageError) as info:
        resolve_placement("2-5", "auto", 1, FOUR)
    assert "4-5" in info.value.message and "0-3" in info.value.hint


def test_pinned_restores_the_old_affinity():
    before = os.sched_getaffinity(0)
    one = frozenset({min(before)})
    with pinned(one):
        assert os.sched_getaffinity(0) == one
    assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError), pinned(one):
        raise RuntimeError("the affinity comes back on errors too")
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before
