"""One self-contained HTML page for an experiment folder: ``spineloss report RUN_DIR`` writes
``RUN_DIR/report.html``.

The page holds, in order: under the title, the protocol and the main settings; the results table of
:mod:`spineloss.report.tables` (the same cells as ``summary.md``: best in bold, † from the paired tests
of :mod:`spineloss.report.stats`), a table of the runs (folds finished, cases, flags, time) and the
paired tests; per-fold and per-case box plots of Dice and the Hausdorff distance
(:mod:`spineloss.report.plots`); training curves from each fold's ``history.csv``; the parameter and
weight trajectories of tuned losses (:mod:`spineloss.report.trajectories`); the best and worst
prediction pictures (``<loss>/pictures/``); the loss-behaviour analysis of ``spineloss analyze`` when
there is one (``--analysis DIR`` or ``RUN_DIR/analysis/``); last, the configuration
(``experiment.json``: the losses and every setting).

Self-contained: images are embedded as base64 ``data:`` URIs, the style sheet and the ~40 lines of script
(click a table header to sort; click a picture to enlarge it) are inline, fonts are the system's, so the
file opens without a network and can be mailed or committed as one file. Tables start ordered by Dice,
best first. Sections with nothing to show (no tuning, no pictures, no analysis) are left out, and a
partly finished grid (losses with fewer folds, folds still training) is shown as it stands.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..atomic import atomic_write_text
from .stats import Comparison, collect_case_values, paired_tests, read_stats, significance_marks
from .tables import COLUMNS, _best, _headers, _table, collect_results, loss_order, summary_rows

__all__ = ["build_report", "write_report"]

_BOLD_OPEN, _BOLD_CLOSE, _DAGGER = "\x01", "\x02", "\x03"   # markers in table text, replaced after escaping


# ----------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------

def write_report(run_dir: str | Path, out: str | Path | None = None, analysis: str | Path | None = None,
                 distance: str | None = None, label: str = "mean", alpha: float = 0.05) -> Path:
    """Write the page of :func:`build_report` to ``out`` (default ``run_dir/report.html``, replaced
    atomically) and return its path."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    return atomic_write_text(path, build_report(run_dir, analysis, distance, label, alpha))


def build_report(run_dir: str | Path, analysis: str | Path | None = None, distance: str | None = None,
                 label: str = "mean", alpha: float = 0.05) -> str:
    """The HTML page of an experiment folder, as text.

    ``analysis``: a ``spineloss analyze`` output folder to include (default: ``run_dir/analysis`` when it
    exists); ``distance``: the Hausdorff column, ``hd`` or ``hd95`` (default: the run's
    ``table_distance``); ``label``: the label entry of the metrics (``"mean"``: over the foreground
    labels); ``alpha``: the significance level of the †. Reads only, except that a tuned loss's
    ``<loss>/tuning.png`` is redrawn from its CSVs. Raises ``ValueError`` when ``run_dir`` is not an
    experiment folder (no ``experiment.json``) or holds no finished run, and when ``analysis`` is given
    but holds no analysis.
    """
    run_dir = Path(run_dir)
    settings = _settings(run_dir)
    distance = distance or settings.get("table_distance", "hd")
    if distance not in ("hd", "hd95"):
        raise ValueError(f"distance must be 'hd' or 'hd95', got {distance!r}")
    results = collect_results(run_dir)
    if not results:
        raise ValueError(f"{run_dir}: no finished runs (no <loss>/fold<k>/metrics.json); the report needs at "
                         f"least one finished (loss, fold)")
    analysis_dir = _analysis_dir(run_dir, analysis)

    rows = summary_rows(results, label=label, distance=distance)
    ranked = sorted(rows, key=lambda loss: _nan_last(rows[loss]["Dice"].mean, descending=True))
    comparisons, stats_note = _comparisons(run_dir, rows, distance, label, alpha)
    sections = [
        ("results", "Results", _results_section(run_dir, settings, results, rows, comparisons, stats_note,
                                                distance, label, alpha)),
        ("distributions", "Box plots", _box_section(run_dir, rows, ranked, distance, label)),
        ("training", "Training", _training_section(run_dir)),
        ("tuning", "Tuning", _tuning_section(run_dir)),
        ("pictures", "Predictions", _pictures_section(run_dir, ranked)),
        ("analysis", "Loss analysis", _analysis_section(analysis_dir) if analysis_dir else ""),
        ("config", "Configuration", _config_section(settings)),
    ]
    sections = [s for s in sections if s[2]]
    name = str(settings.get("name") or run_dir.resolve().name)
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}">\n<h2>{title}</h2>\n{content}\n</section>'
                     for key, title, content in sections)
    return _PAGE.format(title=_e(f"spineloss report: {name}"), name=_e(name), meta=_meta(run_dir, results),
                        overview=_overview(settings), nav=nav, body=body, style=_STYLE, script=_SCRIPT)


# ----------------------------------------------------------------------------------------------------
# reading the run folder
# ----------------------------------------------------------------------------------------------------

def _settings(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a folder (give the experiment's output folder, the one holding "
                         f"experiment.json and <loss>/fold<k>/)")
    path = run_dir / "experiment.json"
    if not path.exists():
        raise ValueError(f"{run_dir}: no experiment.json, so not an experiment folder (give the folder that "
                         f"`spineloss experiment` or `spineloss demo` wrote)")
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object (the resolved config), got {type(settings).__name__}")
    return settings


def _analysis_dir(run_dir: Path, analysis: str | Path | None) -> Path | None:
    if analysis is None:
        default = run_dir / "analysis"
        return default if default.is_dir() and _has_analysis(default) else None
    analysis = Path(analysis)
    if not analysis.is_dir():
        raise ValueError(f"--analysis {analysis}: no such folder (give the --out folder of `spineloss analyze`)")
    if not _has_analysis(analysis):
        raise ValueError(f"--analysis {analysis}: holds neither summary.md nor a PNG plot of `spineloss analyze`")
    return analysis


def _has_analysis(folder: Path) -> bool:
    return (folder / "summary.md").exists() or any(folder.glob("*.png"))


def _fold_key(path: Path) -> tuple:
    digits = path.name[4:]
    return (0, int(digits), "") if digits.isdigit() else (1, 0, path.name)


def _loss_dirs(run_dir: Path) -> list[Path]:
    """Every ``<loss>/`` with a fold folder, in the config's order (then alphabetically)."""
    names = {p.parent.name for p in run_dir.glob("*/fold*") if p.is_dir()}
    order = loss_order(run_dir)
    return [run_dir / n for n in sorted(names, key=lambda n: (order.get(n, len(order)), n))]


def _fold_dirs(loss_dir: Path) -> list[Path]:
    return sorted((p for p in loss_dir.glob("fold*") if p.is_dir()), key=_fold_key)


def _read_history(path: Path) -> list[dict[str, float]]:
    """``history.csv`` rows as numbers (cells that are not numbers are left out)."""
    out = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            values = {}
            for key, text in row.items():
                try:
                    values[key] = float(text)
                except (TypeError, ValueError):
                    pass
            out.append(values)
    return out


def _comparisons(run_dir: Path, rows, distance: str, label: str,
                 alpha: float) -> tuple[list[Comparison], str]:
    """The paired tests behind the daggers: ``stats.csv`` when it matches the results as they stand
    (same label, alpha, best losses and shared case counts), else computed here (nothing written)."""
    best = _best(rows)
    wanted = {"dice": (best["Dice"], True), distance: (best["Hausdorff"], False)}
    values = {}
    for metric in wanted:
        try:
            values[metric] = collect_case_values(run_dir, metric, label)
        except ValueError as exc:
            return [], f"not run: {exc}"
    expected = {(metric, loss) for metric, (b, _) in wanted.items() if b is not None
                for loss in values[metric] if loss != b}
    path = run_dir / "stats.csv"
    if path.exists():
        try:
            stored = [c for c in read_stats(path) if c.label == label and c.metric in wanted]
        except (ValueError, KeyError, OSError):
            stored = []
        fresh = ({(c.metric, c.loss) for c in stored} == expected and len(stored) == len(expected)
                 and all(c.best == wanted[c.metric][0] and math.isclose(c.alpha, alpha)
                         and c.n_shared == len(set(values[c.metric][c.loss]) & set(values[c.metric][c.best]))
                         for c in stored))
        if fresh:
            return stored, "as in stats.csv"
    comps: list[Comparison] = []
    for metric, (b, higher) in wanted.items():
        if b is not None:
            comps += paired_tests(values[metric], higher, alpha, metric=metric, label=label, best=b)
    return comps, "computed for this page: stats.csv is missing or older than the results"


# ----------------------------------------------------------------------------------------------------
# HTML helpers
# ----------------------------------------------------------------------------------------------------

def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nan_last(value: float, descending: bool = False) -> tuple[int, float]:
    if value is None or not math.isfinite(value):
        return (1, 0.0)
    return (0, -value if descending else value)


def _img(png: bytes, alt: str, zoom: bool = False) -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    cls = ' class="zoomable" tabindex="0"' if zoom else ""
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}"{cls}>'


def _figure(png: bytes, alt: str, caption: str = "", zoom: bool = False) -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{_img(png, alt, zoom)}{cap}</figure>"


def _sortable(headers: Sequence[tuple[str, str, str]], body: Iterable[Sequence[tuple[str, object]]],
              sorted_by: int | None = None, cls: str = "", caption: str = "") -> str:
    """A table that sorts when a header is clicked.

    ``headers``: ``(html, type, first direction)`` with type ``"num"`` or ``"text"`` and the direction of
    the first click, ``"ascending"`` or ``"descending"`` (best first). ``body``: rows of ``(html,
    sort value)``; a numeric sort value that is None or NaN sorts last either way. ``sorted_by``: the
    column the rows come ordered by (marked for the script), in its first direction.
    """
    head = []
    for i, (text, kind, first) in enumerate(headers):
        aria = f' aria-sort="{first}"' if i == sorted_by else ""
        head.append(f'<th data-type="{kind}" data-first="{first}"{aria}>{text}</th>')
    lines = []
    for row in body:
        cells = []
        for (content, key), (_, kind, _) in zip(row, headers):
            if isinstance(key, (int, float)) and not isinstance(key, bool):
                key = repr(float(key)) if math.isfinite(key) else ""
            attrs = (' class="num"' if kind == "num" else "") + (f' data-sort="{_e(key)}"' if key is not None else "")
            cells.append(f"<td{attrs}>{content}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table class="sortable {cls}">{cap}<thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>\n' + "\n".join(lines) + "\n</tbody></table></div>")


def _kv_table(items: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _value(v: object) -> str:
    if isinstance(v, (dict, list)):
        return f"<code>{_e(json.dumps(v, separators=(', ', ': ')))}</code>"
    if v is None:
        return '<span class="muted">none</span>'
    if isinstance(v, bool):
        return "true" if v else "false"
    return _e(v)


def _fmt(value: float, digits: int = 3) -> str:
    return "NaN" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


# ----------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------

def _meta(run_dir: Path, results: dict[str, list[dict]]) -> str:
    from .. import __version__

    env = next((fold.get("environment") for folds in results.values() for fold in folds
                if isinstance(fold.get("environment"), dict)), {}) or {}
    parts = [f"run folder <code>{_e(run_dir)}</code>",
             f"page written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by spineloss {_e(__version__)}"]
    trained = ", ".join(f"{k} {_e(env[k])}" for k in ("device", "amp", "torch", "spineloss") if k in env)
    if trained:
        parts.append(f"trained with {trained}")
    return " · ".join(parts)


def _loss_text(loss: object) -> str:
    if isinstance(loss, dict):
        return " + ".join(f"{w:g} {n}" if isinstance(w, (int, float)) else f"{w} {n}" for n, w in loss.items())
    return str(loss)


def _overview(settings: dict) -> str:
    """The protocol and the settings that say what the numbers are, under the page title."""
    training = settings.get("training") if isinstance(settings.get("training"), dict) else {}
    data = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    facts = []
    if data:
        source = data.get("path") or (f"phantom {json.dumps(data['phantom'])}" if data.get("phantom") else None)
        facts.append(("data", source))
        facts.append(("labels", data.get("label_mode")))
    for key, title in (("folds", "outer folds"), ("seed", "seed"), ("selection", "checkpoint"),
                       ("table_distance", "Hausdorff column")):
        if key in settings:
            facts.append((title, settings[key]))
    for key in ("epochs", "iterations_per_epoch", "batch_size", "patch_size", "lr"):
        if key in training:
            facts.append((key.replace("_", " "), training[key]))
    out = []
    if settings.get("protocol"):
        out.append(f'<p class="protocol">{_e(settings["protocol"])}</p>')
    if facts:
        out.append('<dl class="facts">' + "".join(f"<div><dt>{_e(k)}</dt><dd>{_value(v)}</dd></div>"
                                                  for k, v in facts) + "</dl>")
    return "\n".join(out)


def _config_section(settings: dict) -> str:
    """The losses of the config as a table, then every setting of ``experiment.json`` by section."""
    out = []
    losses = settings.get("losses")
    if isinstance(losses, list) and losses:
        body = []
        for spec in losses:
            spec = spec if isinstance(spec, dict) else {"name": spec}
            name = str(spec.get("name", ""))
            body.append([(f"<b>{_e(name)}</b>", name), (_e(_loss_text(spec.get("loss", name))), None),
                         (_value(spec.get("params") or None), None), (_value(spec.get("tuning")), None)])
        out.append("<h3>Losses</h3>")
        out.append(_sortable([("Name", "text", "ascending"), ("Loss", "text", "ascending"),
                              ("Parameters", "text", "ascending"), ("Tuning", "text", "ascending")], body))
    cards = []
    general = [(k, v) for k, v in settings.items() if not isinstance(v, dict) and k not in ("losses", "protocol")]
    if general:
        cards.append(f'<div class="card"><h4>experiment</h4>{_kv_table(general)}</div>')
    for key, section in settings.items():
        if isinstance(section, dict):
            cards.append(f'<div class="card"><h4>{_e(key)}</h4>{_kv_table(section.items())}</div>')
    if cards:
        out.append('<h3>All settings (experiment.json)</h3><div class="cards">' + "".join(cards) + "</div>")
    return "\n".join(out)


def _results_section(run_dir: Path, settings: dict, results, rows, comparisons: list[Comparison],
                     stats_note: str, distance: str, label: str, alpha: float) -> str:
    marks = significance_marks(comparisons)
    text_rows = _table(rows, lambda s: _BOLD_OPEN + s + _BOLD_CLOSE, marks, _DAGGER, distance)
    titles = [t for t, *_ in COLUMNS]
    headers = [("Loss", "text", "ascending")]
    headers += [(_e(h), "num", "descending" if higher else "ascending")
                for h, (_, _, _, higher) in zip(_headers(distance)[1:], COLUMNS)]
    headers.append(("Folds", "num", "descending"))
    dice_col = 1 + titles.index("Dice")
    dagger = (f'<span class="dagger" title="differs from the column\'s best: paired Wilcoxon, Holm-corrected, '
              f'p &lt; {alpha:g}">†</span>')
    body = []
    for line, (loss, cells) in zip(text_rows, rows.items()):
        row = [(f"<b>{_e(loss)}</b>", loss)]
        for text, title in zip(line[1:], titles):
            content = (_e(text).replace(_BOLD_OPEN, "<strong>").replace(_BOLD_CLOSE, "</strong>")
                       .replace(_DAGGER, dagger))
            row.append((content, cells[title].mean))
        row.append((str(len(results[loss])), len(results[loss])))
        body.append(row)
    body.sort(key=lambda r: _nan_last(r[dice_col][1], descending=True))  # best Dice first, NaN last
    folds_text = ", ".join(f"{k}: {len(v)}" for k, v in results.items())
    post = settings.get("postprocess") or {}
    note = (f"Mean ± (std) over folds ({_e(folds_text)}) of each fold's mean over its test cases; label entry "
            f"'{_e(label)}'. Best of each column in <strong>bold</strong>. † differs from the column's best "
            f"in a paired two-sided Wilcoxon signed-rank test on per-case values, Holm-corrected over the "
            f"losses, p &lt; {alpha:g} (tests {_e(stats_note)}). Post-processing: "
            f"{_e(', '.join(f'{k} = {v!r}' for k, v in post.items()) or 'none')}. Click a header to sort.")
    out = [_sortable(headers, body, sorted_by=dice_col, cls="results"), f'<p class="note">{note}</p>']
    out.append(_runs_table(run_dir, settings, results, distance, label))
    if comparisons:
        out.append(_stats_table(comparisons))
    return "\n".join(out)


def _runs_table(run_dir: Path, settings: dict, results: dict[str, list[dict]], distance: str, label: str) -> str:
    """Per loss: finished and running folds, cases scored, NaN distances, flagged cases, training time."""
    expected = settings.get("folds") if isinstance(settings.get("folds"), int) else None
    running = {d.name: [f.name for f in _fold_dirs(d) if not (f / "metrics.json").exists()]
               for d in _loss_dirs(run_dir)}
    body = []
    for loss in list(results) + [n for n in running if n not in results]:
        folds = results.get(loss, [])
        cases = sum(len(f.get("cases", {})) for f in folds)
        nan_cases = sum(int((f.get("nan_counts", {}).get(label) or {}).get(distance, 0)) for f in folds)
        flagged = sum(1 for f in folds for v in (f.get("flags") or {}).values() if v)
        seconds = sum(float(f.get("train_seconds", 0.0) or 0.0) for f in folds)
        done = f"{len(folds)}" + (f" / {expected}" if expected else "")
        body.append([(f"<b>{_e(loss)}</b>", loss), (done, len(folds)),
                     (_e(", ".join(running.get(loss, [])) or "–"), len(running.get(loss, []))),
                     (str(cases), cases), (str(nan_cases), nan_cases), (str(flagged), flagged),
                     (f"{seconds / 60:.1f}", seconds)])
    headers = [("Loss", "text", "ascending"), ("Folds done", "num", "descending"),
               ("Unfinished", "num", "descending"), ("Test cases", "num", "descending"),
               ("NaN distances", "num", "descending"), ("Flagged cases", "num", "descending"),
               ("Training (min)", "num", "descending")]
    return ("<h3>Runs</h3>" + _sortable(headers, body)
            + '<p class="note">Unfinished: fold folders without metrics.json (training, or stopped). NaN '
              "distances: metric values with one empty mask, left out of the means. Flagged: cases the "
              "post-processing flagged (cases.csv, column flags).</p>")


def _stats_table(comparisons: list[Comparison]) -> str:
    body = []
    for c in comparisons:
        body.append([(_e(c.metric), c.metric), (f"<b>{_e(c.loss)}</b>", c.loss), (_e(c.best), c.best),
                     (str(c.n), c.n), (str(c.n_nan), c.n_nan), (_fmt(c.median_diff), c.median_diff),
                     (_fmt(c.p), c.p), (_fmt(c.p_holm), c.p_holm),
                     ("yes †" if c.significant else "no", int(c.significant)), (_e(c.reason), c.reason)])
    headers = [("Metric", "text", "ascending"), ("Loss", "text", "ascending"), ("Best", "text", "ascending"),
               ("Pairs", "num", "descending"), ("NaN pairs", "num", "descending"),
               ("Median diff.", "num", "ascending"), ("p", "num", "ascending"), ("p (Holm)", "num", "ascending"),
               ("Significant", "num", "descending"), ("Note", "text", "ascending")]
    return ("<details><summary>Paired tests behind the † (each loss against the column's best)</summary>"
            + _sortable(headers, body, sorted_by=None)
            + '<p class="note">Median diff.: median of loss − best over the paired cases (Dice as a fraction, '
              "distances in mm).</p></details>")


def _box_section(run_dir: Path, rows, ranked: list[str], distance: str, label: str) -> str:
    from .plots import box_plot

    hd_title = "HD95 (mm)" if distance == "hd95" else "Hausdorff (mm)"
    per_fold = box_plot({"Dice (%)": {loss: rows[loss]["Dice"].values for loss in ranked},
                         hd_title: {loss: rows[loss]["Hausdorff"].values for loss in ranked}},
                        title="Per fold: each dot is one fold's mean over its test cases", lower_is_better=[hd_title])
    out = [_figure(per_fold, "box plots of the per-fold Dice and Hausdorff distance per loss",
                   "Boxes: quartiles and median (orange) of the fold means; whiskers to 1.5 IQR; n = folds.",
                   zoom=True)]
    try:
        dice = collect_case_values(run_dir, "dice", label)
        dist = collect_case_values(run_dir, distance, label)
    except ValueError as exc:
        out.append(f'<p class="note">No per-case plot: {_e(exc)}</p>')
        return "\n".join(out)
    order = [loss for loss in ranked if loss in dice]
    per_case = box_plot({"Dice (%)": {loss: [100.0 * v for v in dice[loss].values()] for loss in order},
                         hd_title: {loss: list(dist[loss].values()) for loss in order}},
                        title="Per case: each dot is one test case", lower_is_better=[hd_title])
    out.append(_figure(per_case, "box plots of the per-case Dice and Hausdorff distance per loss",
                       "Every test case once, scored by the model of the fold that did not train on it "
                       "(metrics.json / cases.csv); n = cases. Losses ordered by mean Dice.", zoom=True))
    return "\n".join(out)


def _training_section(run_dir: Path) -> str:
    from .plots import training_curves

    histories: dict[str, dict[str, list[dict[str, float]]]] = {}
    unfinished: dict[str, list[str]] = {}
    for loss_dir in _loss_dirs(run_dir):
        for fold_dir in _fold_dirs(loss_dir):
            path = fold_dir / "history.csv"
            if path.exists():
                histories.setdefault(loss_dir.name, {})[fold_dir.name] = _read_history(path)
                if not (fold_dir / "metrics.json").exists():
                    unfinished.setdefault(loss_dir.name, []).append(fold_dir.name)
    if not any(any(f.values()) for f in histories.values()):
        return ""
    png = training_curves(histories, unfinished)
    return _figure(png, "training loss per epoch for each loss and fold",
                   "From each fold's history.csv. The validation Dice (on inner validation cases drawn from "
                   "the fold's training cases) is drawn only for runs that scored one.", zoom=True)


def _tuning_section(run_dir: Path) -> str:
    from .trajectories import plot_trajectories

    out = []
    for loss_dir in _loss_dirs(run_dir):
        tuned = any((f / n).exists() for f in _fold_dirs(loss_dir) for n in ("params.csv", "weights.csv"))
        path = plot_trajectories(loss_dir) if tuned else None
        if path is None and (loss_dir / "tuning.png").exists():
            path = loss_dir / "tuning.png"
        if path is not None:
            out.append(f"<h3>{_e(loss_dir.name)}</h3>"
                       + _figure(path.read_bytes(), f"parameter and weight trajectories of {loss_dir.name}",
                                 "One line per fold (params.csv: greedy parameters; weights.csv: adaptive "
                                 "weights).", zoom=True))
    return "\n".join(out)


def _pictures_section(run_dir: Path, ranked: list[str]) -> str:
    order = {loss: i for i, loss in enumerate(ranked)}
    loss_dirs = sorted((d for d in _loss_dirs(run_dir) if (d / "pictures").is_dir()),
                       key=lambda d: (order.get(d.name, len(order)), d.name))
    out = []
    for loss_dir in loss_dirs:
        pics = sorted((loss_dir / "pictures").glob("*.png"),
                      key=lambda p: ({"best": 0, "worst": 1}.get(p.stem.split("_", 1)[0], 2), p.name))
        if not pics:
            continue
        figs = []
        for p in pics:
            kind, _, case = p.stem.partition("_")
            caption = (f"<b>{_e(kind)}</b> test case by Dice: {_e(case)}" if kind in ("best", "worst") and case
                       else _e(p.name))
            figs.append(_figure(_compact_png(p.read_bytes()), f"{loss_dir.name}: {p.stem}", caption, zoom=True))
        out.append(f'<h3>{_e(loss_dir.name)}</h3><div class="pics">{"".join(figs)}</div>')
    if not out:
        return ""
    return ('<p class="note">Three orthogonal slices through the reference\'s centroid: ground truth outlined '
            "solid (blue), prediction dashed (magenta). Click a picture to enlarge it.</p>" + "\n".join(out))


def _compact_png(png: bytes) -> bytes:
    """The picture with a 256-colour palette (grey MRI and two outline colours need no more): about 40 %
    smaller, so a ten-loss page stays a few MB. Pillow comes with matplotlib."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        image.convert("RGB").quantize(256).save(out, "PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def _analysis_section(folder: Path) -> str:
    """``summary.md`` of ``spineloss analyze`` with each study's plot after its findings."""
    pngs = {p.stem: p for p in sorted(folder.glob("*.png"))}
    out = [f'<p class="note">From <code>{_e(folder)}</code> (analysis.csv holds every value).</p>']
    summary = folder / "summary.md"
    if summary.exists():
        blocks = re.split(r"(?m)^(?=## )", summary.read_text())
        for block in blocks:
            out.append(_markdown(block))
            heading = re.match(r"## ([^:\n]+)", block)
            study = heading.group(1).strip() if heading else None
            if study in pngs:
                out.append(_figure(pngs.pop(study).read_bytes(), f"analysis: {study}", zoom=True))
    for stem, path in pngs.items():
        out.append(_figure(path.read_bytes(), f"analysis: {stem}", _e(stem), zoom=True))
    return "\n".join(out)


def _markdown(text: str) -> str:
    """The Markdown of an analysis summary as HTML: headings (shifted below the page's), bullet
    lists, paragraphs, ``**bold**`` and ```code```; everything else is escaped text."""
    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)

    out, para, items = [], [], []

    def flush() -> None:
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        stripped = line.strip()
        heading = re.match(r"(#{1,4})\s+(.*)", stripped)
        if heading:
            flush()
            level = min(6, len(heading.group(1)) + 2)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif stripped.startswith(("- ", "* ")):
            if para:
                flush()
            items.append(stripped[2:])
        elif not stripped:
            flush()
        elif items:
            items[-1] += " " + stripped
        else:
            para.append(stripped)
    flush()
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------------

_STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main { max-width: 1280px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.3rem; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.08rem; margin: 20px 0 8px; }
h4 { font-size: 0.95rem; margin: 0 0 6px; }
.meta, .note, figcaption, caption { color: var(--muted); font-size: 0.88rem; }
.muted { color: var(--muted); }
.note { max-width: 100ch; }
nav { position: sticky; top: 0; z-index: 5; background: rgba(255, 255, 255, 0.96);
      border-bottom: 1px solid var(--line); }
nav div { max-width: 1280px; margin: 0 auto; padding: 8px 24px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
nav a { color: var(--accent); text-decoration: none; font-weight: 600; font-size: 0.92rem; }
nav a:hover { text-decoration: underline; }
section { scroll-margin-top: 48px; }
code { font: 0.85em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
       padding: 1px 4px; border-radius: 4px; }
.table-wrap { overflow-x: auto; margin: 6px 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.sortable th, table.sortable td { padding: 5px 10px; border-bottom: 1px solid var(--line); }
table.sortable td { text-align: left; white-space: nowrap; }
table.sortable td.num { text-align: right; }
table.sortable thead th { background: var(--head); position: sticky; top: 0; text-align: center;
                          cursor: pointer; user-select: none; white-space: nowrap; font-size: 0.9rem; }
table.sortable thead th:hover { background: #eaeef2; }
table.sortable thead th::after { content: " \\2195"; color: #b0b8c1; font-size: 0.8em; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--accent); }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--accent); }
table.sortable tbody tr:nth-child(even) { background: #fafbfc; }
table.sortable tbody tr:hover { background: #eef5fd; }
table.results { font-size: 0.95rem; }
table.results strong { color: #0a3d7a; }
.dagger { color: #b91c1c; font-weight: 700; padding-left: 1px; cursor: help; }
table.kv th { text-align: left; font-weight: 600; padding: 2px 14px 2px 0; vertical-align: top;
              white-space: nowrap; }
table.kv td { padding: 2px 0; }
.protocol { background: #f0f6ff; border-left: 4px solid var(--accent); padding: 8px 12px; max-width: 110ch;
             margin: 10px 0 8px; }
dl.facts { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 0 0 12px; font-size: 0.9rem; }
dl.facts div { display: flex; gap: 6px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-weight: 600; }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; margin-top: 10px;
         align-items: start; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; font-size: 0.88rem;
        overflow-wrap: anywhere; }
figure { margin: 10px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
img.zoomable { cursor: zoom-in; }
img.zoomed { position: fixed; inset: 0; margin: auto; max-width: 98vw; max-height: 98vh; width: auto;
             z-index: 20; cursor: zoom-out; box-shadow: 0 0 0 100vmax rgba(0, 0, 0, 0.7); }
.pics { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 0 16px; }
footer { max-width: 1280px; margin: 30px auto; padding: 0 24px; color: var(--muted); font-size: 0.85rem; }
"""

_SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    return v === null ? cell.textContent.trim() : v;
  }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = table.tHead.rows[0].cells[col].getAttribute("data-type") === "num";
    var sign = dir === "ascending" ? 1 : -1;
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (numeric) {
        x = parseFloat(x); y = parseFloat(y);
        if (isNaN(x) || isNaN(y)) { return (isNaN(x) ? 1 : 0) - (isNaN(y) ? 1 : 0); }
        return sign * (x - y);
      }
      return sign * x.localeCompare(y, undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) { th.setAttribute("aria-sort", dir); } else { th.removeAttribute("aria-sort"); }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "Sort by this column";
      function go() {
        var now = th.getAttribute("aria-sort");
        var first = th.getAttribute("data-first") || "ascending";
        var dir = now ? (now === "ascending" ? "descending" : "ascending") : first;
        sortTable(table, col, dir);
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
      });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("img.zoomable"), function (img) {
    function toggle() { img.classList.toggle("zoomed"); }
    img.addEventListener("click", toggle);
    img.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === "Escape") { toggle(); } });
  });
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>spineloss report: {name}</h1>
<p class="meta">{meta}</p>
{overview}
</header>
<nav><div>{nav}</div></nav>
<main>
{body}
</main>
<footer>Written by <code>spineloss report</code>; one self-contained file (no network needed).</footer>
<script>{script}</script>
</body>
</html>
"""
