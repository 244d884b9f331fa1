"""Run reports: a self-contained report.html with tables and embedded plots."""

from slimkit.report.html import render, write_report

__all__ = ["render", "write_report"]
