"""Report files: reading (recognise, migrate, check) and writing (checked, atomic)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

from kvmctl.errors import UsageError
from kvmctl.report.output import write_atomic
from kvmctl.report.schema import KIND, SCHEMA_VERSION, Report
from kvmctl.report.serialize import load

_NOT_A_REPORT_HINT = "give the JSON file that 'kvmctl experiment --output' wrote"
_DAMAGED_HINT = "the file is damaged; re-run the experiment or restore the file from a copy"

# Migrations from older schema versions: version -> function turning a dict of
# that version into a dict of the next one. Schema 1 is the first.
MIGRATIONS: dict[int, typing.Callable[[dict[str, Any]], dict[str, Any]]] = {}


_NUMBER_PREFIX = re.compile(r"-?\d*\.?\d*(?:[eE][+-]?\d*)?")


def _ends_early(text: str, err: json.JSONDecodeError) -> bool:
    """Whether the decode failed only because the text stops (a cut-off write)."""
    if err.msg.startswith("Unterminated string"):  # such a string runs to the end
        return True
    rest = text[err.pos :].rstrip()
    return (
        not rest
        or any(literal.startswith(rest) for literal in ("true", "false", "null"))
        or _NUMBER_PREFIX.fullmatch(rest) is not None
    )


def parse_report_text(text: str, name: str) -> dict[str, Any]:
    """Decode, recognise and migrate a report document to the current schema."""
    if not text.strip():
        raise UsageError(f"report {name} is empty", _DAMAGED_HINT)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip()[:1] in "{[" and _ends_early(text, err):
            raise UsageError(f"report {name} is truncated (JSON ends early)", _DAMAGED_HINT) from None
        raise UsageError(
            f"report {name} is not JSON (line {err.lineno}, column {err.colno}: {err.msg})", _NOT_A_REPORT_HINT
        ) from None
    if not isinstance(data, dict) or data.get("kind") != KIND or "schema_version" not in data:
        raise UsageError(f"{name} is not a kvmctl report", _NOT_A_REPORT_HINT)
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(f"report {name} has a malformed schema_version {version!r}", _DAMAGED_HINT)
    if version > SCHEMA_VERSION:
        raise UsageError(
            f"report {name} was written by a newer kvmctl (schema {version}; this kvmctl reads up to {SCHEMA_VERSION})",
            "upgrade kvmctl",
        )
    while version < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise UsageError(
                f"report {name} has schema {version}, which no kvmctl release wrote or this one can read",
                f"re-run the experiment with this kvmctl (schema {SCHEMA_VERSION})",
            )
        data = migrate(data)
        version = data["schema_version"]
    return data


def read_report_dict(path: str | Path) -> dict[str, Any]:
    """The report's JSON, migrated to the current schema and checked."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"report {path} does not exist", "check the path, or run 'kvmctl experiment --output'") from None
    except IsADirectoryError:
        raise UsageError(f"report {path} is a directory", _NOT_A_REPORT_HINT) from None
    except PermissionError:
        raise UsageError(f"report {path} is not readable", "check its permissions or run with sudo") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"report {path} is not JSON (not UTF-8 text)", _NOT_A_REPORT_HINT) from None
    data = parse_report_text(text, str(path))
    Report.from_dict(data)  # validate every field now, not halfway through rendering
    return data


def load_report(path: str | Path) -> Report:
    """Read a report file; every failure is a UsageError with a hint."""
    return Report.from_dict(read_report_dict(path))


def report_json(report: Report) -> str:
    """The report as JSON, checked against the schema so every file written loads again.

    A failed check is a bug in the code that filled the report (a string in a
    bool field, a NaN): ValueError names the field.
    """
    data = report.to_dict()
    try:
        text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    except ValueError as err:
        raise ValueError(f"report holds a non-finite number: {err}") from None
    try:
        load(Report, data, "")
    except UsageError as err:
        raise ValueError(f"report does not match schema {SCHEMA_VERSION}: {err.message}") from None
    return text


def write_report(report: Report, path: str | Path) -> Path:
    """Write atomically, mode 0644, never through a symlink, owned by SUDO_UID."""
    return write_atomic(path, report_json(report).encode())
