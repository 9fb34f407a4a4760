"""`kvmctl report diff`: figures lined up, the noise rule, golden text."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from kvmctl.report.diff import Noise, Side, compare, compare_figure, diff_json, pooled_sd, render_diff
from kvmctl.report.schema import Report
from kvmctl.report.figures import HEADLINE
from kvmctl.report.textual import WIDTH
from tests.helpers.reports import make_report, with_repeats

CALLS = next(f for f in HEADLINE if f.key == "aging.calls")


def _with_calls(values: list[float] | None, headline: int = 100) -> Report:
    r = Report(complete=True)
    r.aging.calls = headline
    for v in values or []:
        r.repeats.append({"aging.calls": v})
    return r


def test_pooled_sd_formula():
    a = Side(100.0, 3, 2.0)
    b = Side(110.0, 5, 4.0)
    assert pooled_sd([a, b]) == pytest.approx(math.sqrt((2 * 4 + 4 * 16) / 6))
    assert pooled_sd([Side(1.0, 1, None), Side(1.0, 0, None)]) is None


def test_within_noise():
    d = compare_figure(_with_calls([100, 102, 98]), _with_calls([101, 99, 103]), CALLS)
    assert d.base.value == 100 and d.other.value == 101 and d.delta == 1
    assert d.pooled_sd == pytest.approx(2.0)
    assert d.noise == Noise.WITHIN


def test_beyond_noise():
    d = compare_figure(_with_calls([100, 102, 98]), _with_calls([110, 108, 112]), CALLS)
    assert d.delta == 10 and d.relative == pytest.approx(0.10)
    assert d.noise == Noise.BEYOND  # 10 > 2 * 2.0


def test_boundary_is_within():
    # sd of each side is 2, delta exactly 2 * 2
    d = compare_figure(_with_calls([100, 102, 98]), _with_calls([104, 106, 102]), CALLS)
    assert d.delta == 4 and d.noise == Noise.WITHIN


def test_one_sided_repeats_use_that_side():
    d = compare_figure(_with_calls(None, headline=100), _with_calls([110, 108, 112]), CALLS)
    assert d.base.value == 100 and d.base.n == 0
    assert d.noise == Noise.BEYOND


def test_without_repeats_noise_unknown():
    d = compare_figure(_with_calls(None, 100), _with_calls(None, 150), CALLS)
    assert d.delta == 50 and d.noise == Noise.UNKNOWN


def test_null_figure():
    a, b = _with_calls(None), Report()
    d = compare_figure(a, b, CALLS)
    assert d.delta is None and d.noise == Noise.NA


def test_zero_baseline_has_no_relative_change():
    d = compare_figure(_with_calls(None, 0), _with_calls(None, 5), CALLS)
    assert d.delta == 5 and d.relative is None


def _three() -> list[tuple[str, Report]]:
    return [
        ("mainline.json", with_repeats(make_report(seed=1), 5, seed=11)),
        ("patched.json", with_repeats(make_report(seed=2, scale=1.3), 5, seed=12)),
        ("tdp-host.json", make_report(tdp=True)),
    ]


def test_golden_diff(golden):
    text = render_diff(_three())
    golden("report_diff.txt", text)
    assert all(len(line) <= WIDTH for line in text.splitlines())


def test_diff_flags_real_change_and_keeps_noise_quiet():
    (_, a), (_, b), _ = _three()
    by_key = {d.key: d for d in compare(a, b)}
    assert by_key["aging.calls"].noise == Noise.BEYOND  # 30% more of our aging
    assert by_key["ground_truth.refaults"].noise == Noise.WITHIN


def test_diff_json_shape():
    data = diff_json(_three())
    assert data["baseline"] == "mainline.json"
    assert [c["report"] for c in data["comparisons"]] == ["patched.json", "tdp-host.json"]
    fig = data["comparisons"][1]["figures"][0]
    assert set(fig) >= {"key", "label", "base", "other", "delta", "relative", "pooled_sd", "noise"}
    assert "host.mmu: shadow -> tdp" in data["comparisons"][1]["context_differences"]


def test_columns_align_and_counts_are_whole():
    text = render_diff(_three())
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("figure "):
            current = [line]
            tables.append(current)
        elif current is not None and line and not line.startswith(("--", "values:")):
            current.append(line)
        else:
            current = None
    assert len(tables) == 2
    for table in tables:
        assert len({len(line) for line in table}) == 1, table  # every column right-aligned to one edge
        header = table[0]
        for name in ("A", "delta", "rel", "noise"):  # each cell ends under its header
            edge = header.index(f" {name}") + len(name) + 1
            assert all(line[edge - 1] != " " for line in table[1:] if not line.split()[-1] == "-"), name
    pages = next(line for line in text.splitlines() if line.startswith("pages aged"))
    a_cell, b_cell, delta = re.split(r"\s{2,}", pages)[1:4]
    assert "." not in a_cell + b_cell + delta  # a mean of page counts is still whole pages
    mean = statistics.fmean(r["aging.pages"] for r in _three()[0][1].repeats)
    assert mean != round(mean) and a_cell == f"{round(mean):,}"  # a fractional mean, shown whole


def test_long_context_lines_wrap_instead_of_being_cut():
    (_, a), (_, b), _ = _three()
    b.spec["ager_options"] = {"squeeze_guest": 0.25, "note": "x" * 30 + " a long value that runs past the edge"}
    text = render_diff([("a.json", a), ("b.json", b)])
    assert "runs past the edge" in text
    assert all(len(line) <= WIDTH for line in text.splitlines())
