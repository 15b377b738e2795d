"""Aggregates rows into summary.json, curves, tables and the report card (reads rows only)."""

from robustcert.report.plots import write_curve
from robustcert.report.summary import summarize, write_summary
from robustcert.report.tables import print_summary, summary_table

__all__ = ["print_summary", "summarize", "summary_table", "write_curve", "write_summary"]
