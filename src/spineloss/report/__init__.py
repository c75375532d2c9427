"""Results of an experiment folder: tables (:mod:`.tables`), paired statistics (:mod:`.stats`) and
prediction pictures (:mod:`.pictures`)."""
from .tables import (COLUMNS, Cell, collect_results, format_csv, format_latex, format_markdown, format_terminal,
                     summary_rows, write_summary)

__all__ = ["COLUMNS", "Cell", "collect_results", "summary_rows", "format_markdown", "format_latex",
           "format_terminal", "format_csv", "write_summary"]
