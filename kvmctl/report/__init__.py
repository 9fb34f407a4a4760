"""Experiment reports: the versioned model and everything that renders it.

``model`` holds the dataclass tree (``Report``) and its JSON file rules;
``textual``, ``html``, ``diff`` and ``chrome`` render it; ``cmd`` is
``kvmctl report``. The schema is documented in docs/report-schema.md.
"""

from kvmctl.report.model import SCHEMA_VERSION, Report, headline_figures, load_report, write_report

__all__ = ["SCHEMA_VERSION", "Report", "headline_figures", "load_report", "write_report"]
