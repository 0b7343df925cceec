"""Measure models the same way (accuracy, size, latency, agreement) and write reports."""

from distill.report.measure import latency_ms, latency_row, measure, measure_row, serialized_size
from distill.report.plot import pareto_front
from distill.report.write import (
    COMPARE_COLUMNS,
    COMPARE_CONSOLE_COLUMNS,
    int8_dot_product,
    rows_table,
    write_report,
)

__all__ = [
    "measure",
    "measure_row",
    "latency_ms",
    "latency_row",
    "serialized_size",
    "write_report",
    "rows_table",
    "pareto_front",
    "int8_dot_product",
    "COMPARE_COLUMNS",
    "COMPARE_CONSOLE_COLUMNS",
]
