"""Experiment reports: the versioned schema and everything that renders it.

schema.py     the dataclass tree (``Report``) and its version
figures.py    required and headline figures, dotted access to them
serialize.py  the tree to JSON values and back, naming the field that does not fit
files.py      reading (recognise, migrate, check) and writing (atomic) report files
output.py     safe file writes (atomic, 0644, never through a symlink)
textual.py, html.py (+ svg.py), diff.py, chrome.py   the renderers

The schema is documented in docs/report-schema.md.
"""

from kvmctl.report.figures import headline_figures
from kvmctl.report.files import load_report, write_report
from kvmctl.report.schema import SCHEMA_VERSION, Report

__all__ = ["SCHEMA_VERSION", "Report", "headline_figures", "load_report", "write_report"]
