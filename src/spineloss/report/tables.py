"""Paper-style results tables from an experiment folder.

Rows are losses, columns Acc, Dice, F2, IoU, Precision, Recall (percent) and Hausdorff (mm); each
cell is ``mean ± (std)`` over folds of the fold's mean over its test cases of the label-mean entry
(``"mean"``: the average over the foreground labels, L1..L5 or the single binary label). The best
value of each column is bold (highest; lowest for Hausdorff). A dagger (†) on a Dice or Hausdorff cell
marks a loss that differs from that column's best by a paired Wilcoxon signed-rank test on per-case
values, Holm-corrected (:mod:`spineloss.report.stats`, listed in ``stats.csv``). Distances that are
NaN for some cases (one mask empty) are left out of that case mean and counted: a cell then carries
``[n NaN]``, so a failure is reported, never silently dropped.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text

__all__ = ["COLUMNS", "Cell", "collect_results", "summary_rows", "format_markdown", "format_latex",
           "format_terminal", "write_summary"]

#: (column title, metric key, scale, higher is better)
COLUMNS: list[tuple[str, str, float, bool]] = [
    ("Acc", "accuracy", 100.0, True),
    ("Dice", "dice", 100.0, True),
    ("F2", "f2", 100.0, True),
    ("IoU", "iou", 100.0, True),
    ("Precision", "precision", 100.0, True),
    ("Recall", "recall", 100.0, True),
    ("Hausdorff", "hd", 1.0, False),
]


@dataclass
class Cell:
    """One table cell: the per-fold values and the NaN cases left out of them."""

    values: list[float]
    nan_cases: int = 0

    @property
    def mean(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    @property
    def std(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0 if finite else float("nan")

    def text(self, digits: int = 2) -> str:
        if not math.isfinite(self.mean):
            return "NaN"
        s = f"{self.mean:.{digits}f} ± ({self.std:.{digits}f})"
        return s + (f" [{self.nan_cases} NaN]" if self.nan_cases else "")


def collect_results(run_dir: str | Path) -> dict[str, list[dict]]:
    """``{loss: [metrics.json of fold 0, fold 1, ...]}`` for every finished (loss, fold) of a run."""
    run_dir = Path(run_dir)
    results: dict[str, list[dict]] = {}
    order = loss_order(run_dir)
    for metrics_path in sorted(run_dir.glob("*/fold*/metrics.json")):
        loss = metrics_path.parent.parent.name
        results.setdefault(loss, []).append(json.loads(metrics_path.read_text()))
    return {k: results[k] for k in sorted(results, key=lambda n: (order.get(n, len(order)), n))}


def loss_order(run_dir: str | Path) -> dict[str, int]:
    """``{loss: position}`` in the run's config (``experiment.json``); ``{}`` when there is none."""
    cfg = Path(run_dir) / "experiment.json"
    try:
        return {spec["name"]: i for i, spec in enumerate(json.loads(cfg.read_text()).get("losses", []))}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def summary_rows(results: dict[str, list[dict]], label: str = "mean",
                 distance: str = "hd") -> dict[str, dict[str, Cell]]:
    """``{loss: {column: Cell}}`` from :func:`collect_results` (distance: ``hd`` or ``hd95``)."""
    rows = {}
    for loss, folds in results.items():
        row = {}
        for title, key, scale, _ in COLUMNS:
            key = distance if key == "hd" else key
            values, nan_cases = [], 0
            for fold in folds:
                value = fold["mean"].get(label, {}).get(key, float("nan"))
                values.append(float(value) * scale)
                nan_cases += int(fold.get("nan_counts", {}).get(label, {}).get(key, 0))
            row[title] = Cell(values, nan_cases)
        rows[loss] = row
    return rows


def _best(rows: dict[str, dict[str, Cell]]) -> dict[str, str | None]:
    """The best loss of each column (ties: the one listed first)."""
    best = {}
    for title, _, _, higher in COLUMNS:
        cands = [(cells[title].mean * (1 if higher else -1), -i, loss)
                 for i, (loss, cells) in enumerate(rows.items()) if math.isfinite(cells[title].mean)]
        best[title] = max(cands)[2] if cands else None
    return best


#: The columns that carry significance marks, and the per-case metric behind each.
MARKED_COLUMNS = {"Dice": "dice", "Hausdorff": "hd"}


def _table(rows, bold, marks: dict | None = None, dagger: str = "†", distance: str = "hd") -> list[list[str]]:
    """Cells as text; ``marks[(loss, metric)]`` True adds ``dagger`` (significantly worse than the best)."""
    best = _best(rows)
    marks = marks or {}
    out = []
    for loss, cells in rows.items():
        line = [loss]
        for t, *_ in COLUMNS:
            text = bold(cells[t].text()) if best[t] == loss else cells[t].text()
            metric = MARKED_COLUMNS.get(t)
            if metric is not None and marks.get((loss, distance if metric == "hd" else metric)):
                text += dagger
            line.append(text)
        out.append(line)
    return out


def _headers(distance: str) -> list[str]:
    return ["Loss"] + [f"{t} ({'HD95, ' if distance == 'hd95' else ''}mm)" if t == "Hausdorff" else f"{t} (%)"
                       for t, *_ in COLUMNS]


def format_markdown(rows, distance: str = "hd", marks: dict | None = None) -> str:
    """GitHub Markdown table, best of each column in ``**bold**``, † where ``marks`` says so."""
    head = _headers(distance)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in _table(rows, lambda s: f"**{s}**", marks, distance=distance)]
    return "\n".join(lines) + "\n"


def format_latex(rows, distance: str = "hd", marks: dict | None = None) -> str:
    """A ``booktabs`` LaTeX table, best of each column in ``\\textbf``, ``$^\\dagger$`` where ``marks`` says so."""
    def esc(s: str) -> str:
        return (s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("[", "{[").replace("]", "]}")
                .replace("@DAGGER@", r"$^\dagger$"))
    head = _headers(distance)
    lines = [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\"
              for r in _table(rows, lambda s: r"\textbf{" + s + "}", marks, "@DAGGER@", distance)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def format_terminal(rows, distance: str = "hd", color: bool | None = None, marks: dict | None = None) -> str:
    """Aligned plain-text table; the best cells bold (ANSI) on a terminal, else ``*starred*``."""
    if color is None:
        color = sys.stdout.isatty()
    bold = (lambda s: f"\033[1m{s}\033[0m") if color else (lambda s: f"*{s}*")
    table = [_headers(distance)] + _table(rows, bold, marks, distance=distance)
    visible = [[_strip_ansi(c) for c in r] for r in table]
    widths = [max(len(r[i]) for r in visible) for i in range(len(table[0]))]
    lines = []
    for raw, vis in zip(table, visible):
        lines.append("  ".join(c + " " * (w - len(v)) for c, v, w in zip(raw, vis, widths)))
        if raw is table[0]:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _strip_ansi(s: str) -> str:
    return s.replace("\033[1m", "").replace("\033[0m", "")


def format_csv(rows, selection: str = "") -> str:
    """One row per loss: for each column its mean, std, number of folds and of NaN cases; last, the
    run's checkpoint-selection rule (``[experiment] selection``)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["loss"]
    for t, *_ in COLUMNS:
        header += [f"{t}_mean", f"{t}_std", f"{t}_folds", f"{t}_nan_cases", f"{t}_best"]
    writer.writerow(header + ["selection"])
    best = _best(rows)
    for loss, cells in rows.items():
        line = [loss]
        for t, *_ in COLUMNS:
            c = cells[t]
            line += [f"{c.mean:.6g}", f"{c.std:.6g}", len(c.values), c.nan_cases, int(best[t] == loss)]
        writer.writerow(line + [selection])
    return buf.getvalue()


def run_settings(run_dir: str | Path) -> dict:
    """The run folder's ``experiment.json`` (the resolved config and its protocol), or ``{}``."""
    path = Path(run_dir) / "experiment.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_summary(run_dir: str | Path, distance: str | None = None, label: str = "mean",
                  alpha: float = 0.05) -> str:
    """Write ``summary.md``, ``summary.csv``, ``summary.tex`` and ``stats.csv`` in ``run_dir``; return the
    terminal table. ``distance``: ``hd`` or ``hd95`` (default: the run's ``table_distance``)."""
    from .stats import significance_marks, write_stats

    run_dir = Path(run_dir)
    settings = run_settings(run_dir)
    distance = distance or settings.get("table_distance", "hd")
    results = collect_results(run_dir)
    if not results:
        raise ValueError(f"{run_dir}: no finished runs (no <loss>/fold<k>/metrics.json)")
    rows = summary_rows(results, label=label, distance=distance)
    best = _best(rows)
    selection = settings.get("selection", "")
    comparisons = write_stats(run_dir, metrics=(("dice", True), (distance, False)), label=label, alpha=alpha,
                              best={"dice": best["Dice"], distance: best["Hausdorff"]}, selection=selection)
    marks = significance_marks(comparisons)
    folds = {loss: len(f) for loss, f in results.items()}
    flagged = {loss: sum(1 for fold in f for v in fold.get("flags", {}).values() if v) for loss, f in results.items()}
    post = settings.get("postprocess") or {}
    post_text = ", ".join(f"{k} = {v!r}" for k, v in post.items()) or "none"
    flag_text = (f" Post-processing ({post_text}) flagged cases: "
                 + ", ".join(f"{k}: {v}" for k, v in flagged.items()) + " (cases.csv, column flags)."
                 if any(flagged.values()) else f" Post-processing: {post_text}.")
    protocol = settings.get("protocol", "Protocol not recorded (a run folder of an older spineloss).")
    note = (f"\nMean ± (std) over folds ({', '.join(f'{k}: {v}' for k, v in folds.items())}) of the "
            f"per-fold mean over its test cases; label entry '{label}'. {protocol} "
            f"†: differs from the column's best (bold) loss in a paired two-sided Wilcoxon signed-rank test "
            f"on per-case values over the cases both scored, Holm-corrected over the losses, p < {alpha:g} "
            "(stats.csv: p-values and the median difference, which gives the direction)." + flag_text + "\n")
    atomic_write_text(run_dir / "summary.md", format_markdown(rows, distance, marks) + note)
    atomic_write_text(run_dir / "summary.csv", format_csv(rows, selection))
    atomic_write_text(run_dir / "summary.tex", f"% {protocol}\n" + format_latex(rows, distance, marks))
    return format_terminal(rows, distance, marks=marks) + note
