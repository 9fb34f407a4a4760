"""Shared helpers for the report tests: golden files and the synthetic reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; KVMCTL_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("KVMCTL_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; create it with KVMCTL_UPDATE_GOLDEN=1 and review it")
    assert text == path.read_text(), f"output differs from {path} (KVMCTL_UPDATE_GOLDEN=1 to accept)"


@pytest.fixture
def golden():
    return check_golden
