"""Paired statistics across losses: which losses differ significantly from the best, case by case.

Every loss of an experiment is scored on the same cases (each case lies in exactly one fold's test set,
so the union of the folds' test cases is the whole data set, for every loss). For one metric and one
label entry (``"mean"`` by default: the mean over the foreground labels) this module

1. takes the **best** loss: the one with the best mean, over the cases all losses share, of the finite
   values (highest for overlap metrics, lowest for distances; NaN values are left out of this mean, as
   in the tables; ties go to the loss listed first);
2. compares every other loss ``L`` with the best ``B`` by a **two-sided Wilcoxon signed-rank test**
   (Wilcoxon 1945) of the paired per-case differences ``d_i = x_L(i) - x_B(i)`` on the shared cases.
   Null hypothesis: the distribution of ``d`` is symmetric about 0. With ``r_i`` the rank of ``|d_i|``
   (average ranks for ties), the statistic is ``T = min(W+, W-)``, ``W+ = sum_{d_i > 0} r_i``,
   ``W- = sum_{d_i < 0} r_i``;
3. corrects the p-values of the ``m`` comparisons of that metric (one family per metric and label) by
   **Holm's step-down procedure** (Holm 1979): with the p-values sorted ascending
   ``p_(1) <= ... <= p_(m)``::

       p_holm_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))

   which controls the family-wise error rate at ``alpha`` under any dependence between the tests
   (all comparisons share the best loss, so they are dependent) and is uniformly more powerful than
   Bonferroni (``m p``). A comparison is **significant** when ``p_holm < alpha``.

Pairs in which either value is NaN (a distance with one empty mask, see :mod:`spineloss.metrics`) are left
out of the test and counted (``n_nan``): the test ranks finite differences, and a NaN has no rank. With
fewer than 2 usable pairs the p-value is NaN (``reason`` says why) and the comparison takes no part in the
Holm family; when every usable difference is 0 the two losses agree on every case and ``p = 1``.

Choices:

* ``zero_method="pratt"`` (Pratt 1959). Exact zero differences are common here: the Hausdorff distance
  takes discrete values on the voxel grid, so two losses often have exactly the same HD on a case, and
  Dice saturates at 1 (or 0) on the same cases for both. Wilcoxon's own rule (``"wilcox"``, scipy's
  default) discards the zeros, i.e. it silently drops the cases on which the losses agree and tests the
  remaining ones as if they were the whole sample (Pratt 1959 discusses the anomalies of this
  reduced-sample rule). Pratt's rule ranks the zeros together with the non-zero differences
  (they take the smallest ranks) and then drops their ranks from ``W+`` and ``W-``, so every paired case
  counts in ``n`` and the null distribution (the normal approximation as corrected by Cureton 1967, or
  the permutation distribution) accounts for the ties. ``"zsplit"`` (half of each zero's rank to each
  side) is the less common alternative; Pratt's rule is the standard reference treatment of zeros.
* ``method="auto"`` (scipy's rule as documented in :func:`scipy.stats.wilcoxon`, checked with scipy
  1.17): the **exact** null distribution when ``n <= 50`` and there are no ties or zeros; with ties or
  zeros an exhaustive (hence deterministic) **permutation** test of the ``2^n`` sign flips when
  ``n <= 13``; otherwise the **asymptotic** normal approximation (without continuity correction,
  scipy's default). The field ``p_method`` records which of the three applies to each comparison.
  Older scipy releases used the normal approximation whenever there were zeros, so ``p_method`` is only
  right for recent scipy. Cost: scipy's permutation test evaluates the statistic once per sign pattern
  (about 0.4 s at n = 10 and 2.5 s at n = 13 per comparison on one core); every other case is < 10 ms.

Why pairs of cases and not of folds: the k fold means (k = 3..5) are only k paired values, and a two-sided
signed-rank test on 5 pairs cannot give ``p < 0.0625`` (``2 / 2^5``); on 3 pairs never below 0.25. It could
never find a difference. The case is the natural unit: every case is scored by every loss with a model that
did not see it in training, so pairing by case removes the large between-case variation (anatomy, image
quality, field of view) from the comparison and keeps only the effect of the loss. Caveat: the cases of one
fold share one trained model, so the test treats training randomness as fixed; it answers "does loss L
segment these cases differently from the best loss", not "would a re-trained network differ".

References:
    F. Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1(6):80-83, 1945.
    S. Holm, "A simple sequentially rejective multiple test procedure", Scandinavian Journal of
    Statistics 6(2):65-70, 1979.
    J. W. Pratt, "Remarks on zeros and ties in the Wilcoxon signed rank procedures", Journal of the
    American Statistical Association 54(287):655-667, 1959.
    E. E. Cureton, "The normal approximation to the signed-rank sampling distribution when zero
    differences are present", Journal of the American Statistical Association 62(319):1068-1069, 1967.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_text

import numpy as np

__all__ = ["ZERO_METHOD", "WILCOXON_METHOD", "Comparison", "collect_case_values", "holm", "paired_tests",
           "write_stats", "read_stats", "significance_marks"]

#: scipy.stats.wilcoxon's zero_method (see the module docstring for why Pratt's rule)
ZERO_METHOD = "pratt"
#: scipy.stats.wilcoxon's method: exact / exhaustive permutation for small samples, else normal
WILCOXON_METHOD = "auto"


@dataclass
class Comparison:
    """One loss against the best loss of a metric, on the cases both were scored on.

    ``mean`` and ``mean_best`` are the means of the ``n`` paired values used in the test (the best loss
    itself was chosen by its mean over all shared cases with finite values); ``median_diff`` is the
    median of ``loss - best`` over those pairs (negative for a worse loss when higher is better,
    positive when lower is better). ``n_shared`` cases are scored by every loss, ``n_nan`` of them have
    a NaN for this loss or the best and are left out, ``n = n_shared - n_nan`` pairs are tested and
    ``n_zero`` of those have a zero difference (kept, Pratt's rule). ``p`` is the two-sided Wilcoxon
    signed-rank p-value, ``p_holm`` the Holm-adjusted one over the metric's family, ``significant``
    is ``p_holm < alpha``. ``reason`` is empty unless the test could not be run as usual.
    """

    metric: str
    label: str
    loss: str
    best: str
    higher_is_better: bool
    n_shared: int
    n: int
    n_nan: int
    n_zero: int
    mean: float
    mean_best: float
    median_diff: float
    statistic: float
    p: float
    p_holm: float
    alpha: float
    significant: bool
    p_method: str
    reason: str = ""


_FIELDS = [f.name for f in dataclasses.fields(Comparison)]


# ----------------------------------------------------------------------------------------------------
# reading an experiment folder
# ----------------------------------------------------------------------------------------------------

def collect_case_values(run_dir: str | Path, metric: str, label: str = "mean") -> dict[str, dict[str, float]]:
    """``{loss: {case_id: value}}`` of one metric and label entry, from every ``*/fold*/metrics.json``.

    ``loss`` is the folder name; losses come in the order of ``experiment.json`` when the run has one,
    else alphabetically, and cases sorted by id. NaN values (and ``null``) are kept as NaN. Raises
    ``ValueError`` when the folder holds no finished run, when a case lacks the label entry or metric
    (the message lists what the file has) or when one case appears in two folds of the same loss.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a folder (give the experiment's output folder, the one holding "
                         f"<loss>/fold<k>/metrics.json)")
    paths = sorted(run_dir.glob("*/fold*/metrics.json"))
    if not paths:
        raise ValueError(f"{run_dir}: no finished runs (no <loss>/fold<k>/metrics.json)")
    values: dict[str, dict[str, float]] = {}
    source: dict[tuple[str, str], Path] = {}
    for path in paths:
        loss = path.parent.parent.name
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read it as JSON ({exc}); delete it to re-run that fold") from exc
        cases = data.get("cases")
        if not isinstance(cases, dict):
            raise ValueError(f"{path}: no 'cases' entry with per-case metrics (written by an older "
                             f"version? re-run that fold)")
        per_loss = values.setdefault(loss, {})
        for case_id, entry in cases.items():
            if label not in entry:
                raise ValueError(f"{path}: case {case_id!r} has no label entry {label!r} "
                                 f"(it has: {', '.join(sorted(entry))})")
            if metric not in entry[label]:
                raise ValueError(f"{path}: case {case_id!r}, label {label!r} has no metric {metric!r} "
                                 f"(it has: {', '.join(sorted(entry[label]))})")
            if case_id in per_loss:
                raise ValueError(f"case {case_id!r} of loss {loss!r} is in two folds: "
                                 f"{source[(loss, case_id)]} and {path}; the folds of a run must not overlap")
            value = entry[label][metric]
            per_loss[case_id] = float("nan") if value is None else float(value)
            source[(loss, case_id)] = path
    from .tables import loss_order
    order = loss_order(run_dir)
    return {loss: dict(sorted(values[loss].items()))
            for loss in sorted(values, key=lambda n: (order.get(n, len(order)), n))}


# ----------------------------------------------------------------------------------------------------
# the tests
# ----------------------------------------------------------------------------------------------------

def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    With the ``m`` finite p-values sorted ascending, ``p_adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``
    (Holm 1979); the running maximum keeps the adjusted values monotone in the raw ones (equal raw
    p-values get equal adjusted values). NaN entries (comparisons that could not be tested) stay NaN
    and do not count in ``m``.

    >>> [round(v, 12) for v in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for j, i in enumerate(order):  # j = 0..m-1, multiplier m - j
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def _p_method(n: int, n_zero: int, has_ties: bool) -> str:
    """Which null distribution scipy's ``method="auto"`` uses (the rule documented in scipy 1.17)."""
    if n > 50:
        return "asymptotic"
    if n_zero == 0 and not has_ties:
        return "exact"
    return "permutation" if n <= 13 else "asymptotic"


def _wilcoxon(diff: np.ndarray) -> tuple[float, float, str, str]:
    """``(statistic, p, p_method, reason)`` of the two-sided signed-rank test of ``diff``."""
    n = diff.size
    if n < 2:
        return math.nan, math.nan, "", f"only {n} usable paired case{'s' if n != 1 else ''} (need 2)"
    if np.all(diff == 0):
        return 0.0, 1.0, "", "all paired differences are zero"
    from scipy.stats import wilcoxon

    nonzero = np.abs(diff[diff != 0])
    has_ties = np.unique(np.abs(diff)).size < n
    res = wilcoxon(diff, zero_method=ZERO_METHOD, method=WILCOXON_METHOD, alternative="two-sided")
    method = _p_method(n, int(n - nonzero.size), bool(has_ties))
    return float(res.statistic), float(min(1.0, res.pvalue)), method, ""


def paired_tests(values: Mapping[str, Mapping[str, float]], higher_is_better: bool, alpha: float = 0.05, *,
                 metric: str = "", label: str = "", best: str | None = None) -> list[Comparison]:
    """Every loss against the best one: Wilcoxon signed-rank per case, Holm over the family.

    ``values``: ``{loss: {case_id: value}}`` of one metric (e.g. from :func:`collect_case_values`);
    ``higher_is_better``: True for Dice-like metrics, False for distances; ``metric``/``label`` are only
    copied into the results; ``best``: the loss to compare the others with (a results table passes its
    bolded best, so marks and bold agree), else the best mean over the cases every loss has. Each
    comparison uses the cases that loss and the best both scored (``n_shared``), so a loss whose grid is
    unfinished limits only its own test. Returns one :class:`Comparison`
    per loss other than the best, in the order of ``values`` (empty with fewer than two losses). Never
    raises for degenerate data (no shared case, all NaN, identical values): ``p`` is then NaN or 1 and
    ``reason`` says why. See the module docstring for the test, the correction and the choices.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    losses = list(values)
    if len(losses) < 2:
        return []
    shared = set(values[losses[0]])
    for loss in losses[1:]:
        shared &= set(values[loss])
    cases = sorted(shared)
    table = {loss: np.array([_as_float(values[loss][c]) for c in cases], dtype=np.float64) for loss in losses}

    def finite_mean(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else math.nan

    means = {loss: finite_mean(table[loss]) for loss in losses}
    ranked = [loss for loss in losses if math.isfinite(means[loss])]
    if best is not None:
        if best not in values:
            raise ValueError(f"best={best!r} is not one of the losses {losses}")
    elif ranked:
        sign = -1.0 if higher_is_better else 1.0
        best = min(ranked, key=lambda loss: (sign * means[loss], losses.index(loss)))
    else:
        best = losses[0]

    comparisons: list[Comparison] = []
    for loss in losses:
        if loss == best:
            continue
        # each pair on the cases both scored (a loss whose grid is not finished limits only its own test)
        cases = sorted(set(values[loss]) & set(values[best]))
        x_all = np.array([_as_float(values[loss][c]) for c in cases], dtype=np.float64)
        xb_all = np.array([_as_float(values[best][c]) for c in cases], dtype=np.float64)
        ok = np.isfinite(x_all) & np.isfinite(xb_all)
        x, xb = x_all[ok], xb_all[ok]
        diff = x - xb
        if not cases:
            stat, p, method, reason = math.nan, math.nan, "", "no case is scored by every loss"
        elif not ranked:
            stat, p, method, reason = math.nan, math.nan, "", "every value is NaN"
        else:
            stat, p, method, reason = _wilcoxon(diff)
        comparisons.append(Comparison(
            metric=metric, label=label, loss=loss, best=best, higher_is_better=bool(higher_is_better),
            n_shared=len(cases), n=int(ok.sum()), n_nan=int((~ok).sum()), n_zero=int(np.sum(diff == 0)),
            mean=float(x.mean()) if x.size else math.nan, mean_best=float(xb.mean()) if xb.size else math.nan,
            median_diff=float(np.median(diff)) if diff.size else math.nan, statistic=stat, p=p,
            p_holm=math.nan, alpha=float(alpha), significant=False, p_method=method, reason=reason))
    for comp, p_adj in zip(comparisons, holm([c.p for c in comparisons])):
        comp.p_holm = p_adj
        comp.significant = bool(math.isfinite(p_adj) and p_adj < alpha)
    return comparisons


def _as_float(value) -> float:
    return math.nan if value is None else float(value)


# ----------------------------------------------------------------------------------------------------
# stats.csv
# ----------------------------------------------------------------------------------------------------

def write_stats(run_dir: str | Path, metrics: Iterable[tuple[str, bool]] = (("dice", True), ("hd", False)),
                label: str = "mean", alpha: float = 0.05, best: Mapping[str, str] | None = None,
                selection: str = "") -> list[Comparison]:
    """Run :func:`paired_tests` for each ``(metric, higher_is_better)`` and write ``run_dir/stats.csv``.

    One family (one Holm correction) per metric. The CSV has one row per comparison and a column per
    :class:`Comparison` field; floats are written with ``repr`` (shortest text that reads back to the
    same double, so no p-value is rounded), NaN as ``nan``, booleans as ``1``/``0``. The file is
    replaced atomically (temporary file + rename). Returns the comparisons (read them back with
    :func:`read_stats`). ``best``: ``{metric: loss}`` to compare with (see :func:`paired_tests`);
    ``selection``: the run's checkpoint-selection rule, written in a last column so the file says
    which protocol produced it.
    """
    run_dir = Path(run_dir)
    comparisons: list[Comparison] = []
    for metric, higher in metrics:
        values = collect_case_values(run_dir, metric, label)
        comparisons += paired_tests(values, higher, alpha, metric=metric, label=label,
                                    best=(best or {}).get(metric))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(_FIELDS) + ["selection"])
    for comp in comparisons:
        writer.writerow([_cell(getattr(comp, f)) for f in _FIELDS] + [selection])
    atomic_write_text(run_dir / "stats.csv", buf.getvalue())
    return comparisons


def _cell(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_stats(path: str | Path) -> list[Comparison]:
    """The comparisons of a ``stats.csv`` written by :func:`write_stats`."""
    path = Path(path)
    types = {f.name: f.type for f in dataclasses.fields(Comparison)}
    out = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(_FIELDS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a stats.csv of this version (missing columns {sorted(missing)}); "
                             f"rewrite it with write_stats")
        for row in reader:
            kwargs = {}
            for name in _FIELDS:
                kind, text = types[name], row[name]
                kwargs[name] = (text == "1" if kind == "bool" else int(text) if kind == "int"
                                else float(text) if kind == "float" else text)
            out.append(Comparison(**kwargs))
    return out




def significance_marks(comparisons: Iterable[Comparison]) -> dict[tuple[str, str], bool]:
    """``{(loss, metric): significant}`` for a table's daggers (``loss`` differs from the column's best).

    The best loss of a metric has no entry (it is not compared with itself). Give the comparisons of
    one label entry: the same (loss, metric) under two labels raises ``ValueError``.
    """
    marks: dict[tuple[str, str], bool] = {}
    labels: dict[tuple[str, str], str] = {}
    for comp in comparisons:
        key = (comp.loss, comp.metric)
        if key in marks and labels[key] != comp.label:
            raise ValueError(f"({comp.loss!r}, {comp.metric!r}) appears for labels {labels[key]!r} and "
                             f"{comp.label!r}; pass the comparisons of one label entry")
        marks[key] = bool(comp.significant)
        labels[key] = comp.label
    return marks
