"""Measure models the same way (accuracy, size, latency, agreement) and write reports."""

from distill.report.measure import latency_ms, measure, serialized_size
from distill.report.write import rows_table, write_report

__all__ = ["measure", "latency_ms", "serialized_size", "write_report", "rows_table"]
