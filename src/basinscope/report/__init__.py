"""The self-contained HTML report."""

from basinscope.report.html import Report

__all__ = ["Report"]
