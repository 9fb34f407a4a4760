"""The answer every probe gives: an :class:`Item` that explains itself, and the file reads behind it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT_REMEDY = "run as root (sudo)"
SETUP_REMEDY = "run scripts/setup.sh as root"


@dataclass(frozen=True)
class Item:
    """One capability. Truthy when available, so ``if caps.tdp:`` reads well.

    ``reason``/``remedy`` explain a missing item, or a caveat on an available
    one (e.g. kernel headers that do not match the running kernel).
    """

    available: bool
    value: Any = None
    reason: str | None = None
    remedy: str | None = None
    source: str | None = None

    def __bool__(self) -> bool:
        return self.available

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "value": self.value, "reason": self.reason,
                "remedy": self.remedy, "source": self.source}


def ok(value: Any = True, source: str | None = None, reason: str | None = None, remedy: str | None = None) -> Item:
    return Item(True, value, reason, remedy, source)


def missing(reason: str, remedy: str | None = None, value: Any = None, source: str | None = None) -> Item:
    return Item(False, value, reason, remedy, source)


def first_missing(*items: Item) -> Item:
    """The first item that is not available, else the last one."""
    return next((item for item in items if not item), items[-1])


# --- reading host files: a missing or unreadable file is an answer, not an exception --------------


def is_root() -> bool:
    return os.geteuid() == 0


def exists(path: Path) -> bool:
    """Path.exists() that says False instead of raising where a 0700 parent (tracefs, debugfs) hides it."""
    try:
        return path.exists()
    except OSError:
        return False


def is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def read(path: str | Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, one-line reason it could not be read)."""
    try:
        return Path(path).read_text(), None
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except PermissionError:
        return None, f"cannot read {path}: permission denied" + ("" if is_root() else " (needs root)")
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror}"


def read_strip(path: str | Path) -> str | None:
    text, _ = read(path)
    return text.strip() if text is not None else None
