"""Results of an experiment folder: tables (:mod:`.tables`), paired statistics (:mod:`.stats`), prediction
pictures (:mod:`.pictures`), figures (:mod:`.plots`) and the self-contained HTML page (:mod:`.html`)."""
from .html import build_report, write_report
from .tables import (COLUMNS, Cell, collect_results, format_csv, format_latex, format_markdown, format_terminal,
                     summary_rows, write_summary)

__all__ = ["COLUMNS", "Cell", "collect_results", "summary_rows", "format_markdown", "format_latex",
           "format_terminal", "format_csv", "write_summary", "build_report", "write_report"]
