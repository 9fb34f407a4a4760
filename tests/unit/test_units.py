"""Sizes and durations from the command line and spec files."""

from __future__ import annotations

import pytest

from kvmctl.errors import UsageError
from kvmctl.units import format_size, parse_duration, parse_size

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("text,value", [
    ("4096", 4096), ("1", 1), ("1K", K), ("1k", K), ("64M", 64 * M), ("512m", 512 * M), ("1G", G), ("1g", G),
    ("2T", 2 * T), ("2MiB", 2 * M), ("2MB", 2 * M), ("1.5K", 1536), ("0.5G", 512 * M), (" 64M ", 64 * M),
    ("64 M", 64 * M), ("1gib", G), (7, 7),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "0M", "-1", "-1G", "", "G", "1X", "1.5", "0.3K", "1e9", "1 G B", "12 34",
                                  "1M2", "0x1000", 0, -5])
def test_parse_size_errors(text):
    with pytest.raises(UsageError) as info:
        parse_size(text, "--mem")
    assert info.value.message.startswith("--mem ") and info.value.hint


@pytest.mark.parametrize("text,value", [
    ("5s", 5.0), ("5", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1.5us", 1.5e-6), ("10ns", 1e-8),
    (" 3s ", 3.0), ("3 s", 3.0), (0.5, 0.5), (2, 2.0),
])
def test_parse_duration(text, value):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "0s", "-1s", "", "s", "5 minutes", "5S", "1d", "1.2.3s", 0, -1.0])
def test_parse_duration_errors(text):
    with pytest.raises(UsageError) as info:
        parse_duration(text, "--duration")
    assert info.value.message.startswith("--duration ") and info.value.hint


@pytest.mark.parametrize("n,text", [(G, "1G"), (64 * M, "64M"), (3 * K, "3K"), (1536, "1536B"), (5, "5B"),
                                    (2 * T, "2T"), (G + M, "1025M")])
def test_format_size(n, text):
    assert format_size(n) == text
    assert parse_size(text.rstrip("B")) == n
