"""Shared parts of the lumbar benchmarks: the split, the evaluation at the original grid, the curve log.

Both sides of the lumbar comparison (``bench/train_lumbar.py``: spineloss; ``bench/peer_monai.py``:
the MONAI tutorial peer) use this module so that they are judged by the same code:

* :func:`lumbar_split` -- the peer's split: cases sorted by case id, the last ``n_val`` (8) are the
  validation cases, the rest train.
* :func:`evaluate` -- each pipeline predicts a ``uint8`` label map on the ORIGINAL (1 mm) voxel grid
  of a validation case; the map is compared with the original label file. Dice is counted from a
  joint histogram (``np.bincount``) of (reference, prediction) values: per-label Dice, the binary
  (all vertebrae vs background) Dice, the confusion matrix and the confusion between neighbouring
  levels (L1/L2, ..., L4/L5). Empty rule: reference and prediction both empty -> Dice 1.
* :func:`resample_scores_to_original` -- class scores on a coarser grid back to the original grid,
  trilinear (``grid_sample(align_corners=True)`` semantics on coarse voxel indices, border padding),
  then arg-max. Each pipeline passes ITS OWN grid convention as ``index_scale``/``index_offset``
  (original index ``j`` -> coarse index ``j * scale + offset``, per axis):

  - MONAI ``Spacingd`` (:func:`monai_index_map`): the output affine keeps the input's orientation and
    puts output voxel 0 on input voxel 0 (``compute_shape_offset``, ``scale_extent=False``: the
    corners are voxel CENTRES), so coarse voxel ``i`` lies at original position ``i * new/old``:
    ``j -> j * old_spacing / new_spacing`` (1 mm -> 2 mm: ``j -> j / 2``, offset 0); the shape is
    ``round((n - 1) * old / new) + 1`` (224 -> 112, 77 -> 39). Checked on synthetic NIfTI files
    (identity affine, the lumbar permuted/flipped affine, a shifted origin): a bilinear ramp
    ``f(j) = j`` resampled by ``Spacingd(pixdim=2)`` gives ``f = 2 i`` at coarse voxel ``i`` (error
    < 1e-13), a label block at original index 10 lands at coarse index 5 with ``nearest``, and
    ``inv(A_out) @ A_in = diag(0.5, 0.5, 0.5)`` with zero translation. On real lumbar cases
    (224 x 224 x 77 -> 112 x 112 x 39): Gaussian-blurred one-hot labels resampled by ``Spacing``
    (bilinear) and mapped back with ``j -> j / 2`` reproduce the 1 mm arg-max on 99.1 % of the
    foreground voxels, against 92 % with the ``align_corners=False`` map and 85 % with a +-1/2 coarse
    voxel offset. The last 1 mm voxel of the first two axes (j = 223 -> 111.5) lies beyond the last
    2 mm voxel centre and takes its value (border padding); the third axis ends exactly (76 -> 38).
  - spineloss / ``F.interpolate(align_corners=False)`` (:func:`align_corners_false_index_map`):
    voxel ``i`` of the ``m``-voxel grid covers the same field of view as the ``n``-voxel original,
    centre at original ``(i + 0.5) * n / m - 0.5``: ``j -> (j + 0.5) * m / n - 0.5``.

* :class:`CurveLog` -- the learning curve (training seconds, steps, loss, Dice ...), printed row by
  row, written as CSV, and the one-line summary ``binary_dice=X multiclass_dice=Y steps=N minutes=M``.

Run the scripts from the repository root (``python bench/<script>.py``); the data default
``../shared/data/lumbar`` is relative to the current directory, falling back to the repository root.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
try:  # the package is normally installed (editable) in the venv; fall back to the source tree
    import spineloss  # noqa: F401
except ImportError:  # pragma: no cover - only without an install
    sys.path.insert(0, str(_REPO / "src"))

from spineloss.data.layout import Case, read_dataset, spacing_from_affine  # noqa: E402

__all__ = [
    "DEFAULT_DATA", "LEVELS", "Case", "CurveLog", "CurveRow", "align_corners_false_index_map",
    "evaluate", "format_evaluation", "load_reference", "lumbar_split", "monai_index_map",
    "resample_scores_to_original", "resolve_data_dir",
]

DEFAULT_DATA = "../shared/data/lumbar"
"""Default data folder (nnU-Net v2 layout), relative to the repository root."""

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
"""Foreground labels of the lumbar data: L1..L5."""


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike = DEFAULT_DATA) -> Path:
    """``data_dir`` as given when it exists, else relative to the repository root (if that exists)."""
    p = Path(data_dir).expanduser()
    if not p.is_absolute() and not p.exists() and (_REPO / p).exists():
        return (_REPO / p).resolve()
    return p


def lumbar_split(data_dir: str | os.PathLike = DEFAULT_DATA, n_val: int = 8) -> tuple[list[Case], list[Case]]:
    """The peer's split: cases sorted by ``case_id``; the last ``n_val`` validate, the rest train.

    Returns ``(train_cases, val_cases)`` of :class:`spineloss.data.layout.Case` (``case_id``,
    ``image_paths``, ``label_path``), read with :func:`spineloss.data.layout.read_dataset`.
    """
    info = read_dataset(resolve_data_dir(data_dir))
    cases = sorted(info.cases, key=lambda c: c.case_id)
    if not 0 < n_val < len(cases):
        raise ValueError(f"n_val must be between 1 and {len(cases) - 1} for {len(cases)} cases, got {n_val}")
    return cases[:-n_val], cases[-n_val:]


def load_reference(case: Case) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The case's label map as stored (``uint8``, ``D x H x W``, original grid) and its spacing (mm)."""
    import nibabel as nib

    if case.label_path is None:
        raise ValueError(f"{case.case_id}: case has no label file")
    img = nib.load(str(case.label_path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{case.label_path}: expected a 3D label map, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError(f"{case.label_path}: label map has non-integer values")
    if data.min() < 0 or data.max() > 255:
        raise ValueError(f"{case.label_path}: label values must lie in 0..255, got {data.min()}..{data.max()}")
    return data.astype(np.uint8, copy=False), spacing_from_affine(img.affine)


# --------------------------------------------------------------------------------------------------
# coarse scores -> original grid
# --------------------------------------------------------------------------------------------------
def monai_index_map(original_spacing: Sequence[float], coarse_spacing: Sequence[float]
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(index_scale, index_offset)`` of MONAI ``Spacingd``: ``j -> j * old / new`` (origin kept).

    Valid when the affine is a (signed) permutation times a diagonal, as for the lumbar data; in
    general use ``inv(A_coarse) @ A_original`` from the MetaTensor (see ``bench/peer_monai.py``).
    """
    scale = tuple(float(o) / float(n) for o, n in zip(original_spacing, coarse_spacing))
    return scale, tuple(0.0 for _ in scale)


def align_corners_false_index_map(original_shape: Sequence[int], coarse_shape: Sequence[int]
                                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(index_scale, index_offset)`` of ``F.interpolate(align_corners=False)`` (field of view kept).

    Coarse voxel ``i`` of ``m`` sits at original ``(i + 0.5) * n / m - 0.5``, so
    ``j -> (j + 0.5) * m / n - 0.5``: scale ``m / n``, offset ``0.5 * m / n - 0.5``.
    """
    scale = tuple(float(m) / float(n) for n, m in zip(original_shape, coarse_shape))
    return scale, tuple(0.5 * s - 0.5 for s in scale)


def _axis_weights(n_out: int, n_in: int, scale: float, offset: float):
    """Indices and weights of linear interpolation at coarse positions ``j * scale + offset``."""
    import torch

    pos = torch.arange(n_out, dtype=torch.float64) * scale + offset
    pos = pos.clamp(0.0, float(n_in - 1))  # border padding
    lo = pos.floor().long().clamp(max=max(n_in - 2, 0))
    w_hi = (pos - lo.double()).float()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, w_hi


def resample_scores_to_original(scores, original_shape: Sequence[int], index_scale: float | Sequence[float],
                                index_offset: float | Sequence[float] = 0.0) -> np.ndarray:
    """Label map on the original grid from class scores on a coarser grid.

    Args:
        scores: ``C x d x h x w`` tensor (or array) of logits/probabilities on the coarse grid, padding
            already cropped. ``C == 1``: a sigmoid output, label = ``score > 0`` (logits).
        original_shape: ``(D, H, W)`` of the original grid.
        index_scale, index_offset: per axis (or one number for all), original voxel index ``j`` maps to
            the coarse index ``j * scale + offset`` -- the pipeline's own grid convention, e.g.
            :func:`monai_index_map` or :func:`align_corners_false_index_map`.

    Returns:
        ``uint8`` ``D x H x W`` arg-max of the scores interpolated trilinearly at those coarse
        positions. This is exactly ``grid_sample(mode="bilinear", padding_mode="border",
        align_corners=True)`` evaluated at the normalised coarse indices, computed separably (one
        axis at a time: cheaper in memory and time than a full sampling grid). NaN scores are not
        supported.
    """
    import torch

    s = torch.as_tensor(scores)
    if s.ndim != 4:
        raise ValueError(f"scores must be C x d x h x w, got shape {tuple(s.shape)}")
    if len(original_shape) != 3:
        raise ValueError(f"original_shape must have 3 entries, got {tuple(original_shape)}")
    scale = (float(index_scale),) * 3 if np.isscalar(index_scale) else tuple(float(v) for v in index_scale)
    offset = (float(index_offset),) * 3 if np.isscalar(index_offset) else tuple(float(v) for v in index_offset)
    if len(scale) != 3 or len(offset) != 3:
        raise ValueError(f"index_scale and index_offset need 3 entries, got {scale} and {offset}")
    s = s.detach().float()
    # last axis first (the smallest tensor) as a matrix product with the (n_in x n_out) interpolation
    # matrix, then the two leading axes by gathering the two neighbouring slices and blending them
    n_out, n_in = int(original_shape[2]), int(s.shape[3])
    lo, hi, w = _axis_weights(n_out, n_in, scale[2], offset[2])
    interp = torch.zeros(n_in, n_out)
    cols = torch.arange(n_out)
    interp.index_put_((lo, cols), 1.0 - w, accumulate=True)
    interp.index_put_((hi, cols), w, accumulate=True)
    s = torch.matmul(s, interp)
    for axis in (1, 0):
        n_out, n_in = int(original_shape[axis]), int(s.shape[axis + 1])
        lo, hi, w = _axis_weights(n_out, n_in, scale[axis], offset[axis])
        shape = list(s.shape)
        # (before, axis, after) view: index_select on the middle of a 3D view is far faster on CPU
        flat = s.reshape(int(np.prod(shape[: axis + 1])), n_in, -1)
        flat = torch.lerp(flat.index_select(1, lo), flat.index_select(1, hi), w.view(1, n_out, 1))
        shape[axis + 1] = n_out
        s = flat.view(shape)
    if s.shape[0] == 1:
        return (s[0] > 0).to(torch.uint8).numpy()
    # arg-max over channels by a running maximum (first maximum wins, like torch.argmax); much
    # faster on CPU than a strided reduction over the leading axis
    best = s[0].clone()
    label = torch.zeros(best.shape, dtype=torch.uint8)
    for c in range(1, s.shape[0]):
        better = s[c] > best
        label.masked_fill_(better, c)
        torch.maximum(best, s[c], out=best)
    return label.numpy()


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def _dice(tp: int, n_ref: int, n_pred: int) -> float:
    """The Dice of :func:`spineloss.metrics.overlap_metrics` (the one the tables report) from counts:
    ``2 tp / (|ref| + |pred|)``; both empty -> 1."""
    from spineloss.metrics import overlap_metrics
    return overlap_metrics(tp, n_pred - tp, n_ref - tp, 0)["dice"]


def evaluate(predict_fn: Callable[[Case], np.ndarray], val_cases: Sequence[Case], label_mode: str,
             num_classes: int = 6) -> dict[str, Any]:
    """Score ``predict_fn`` on ``val_cases`` against the original label files, at the original grid.

    Args:
        predict_fn: ``predict_fn(case) -> uint8 D x H x W`` label map on the case's ORIGINAL grid;
            labels ``0..num_classes-1`` in ``multiclass`` mode, ``0..1`` in ``binary`` mode.
        val_cases: the cases to score (:func:`lumbar_split`).
        label_mode: ``"multiclass"`` or ``"binary"``.
        num_classes: classes in multiclass mode (background + L1..L5 = 6).

    Returns a dict:
        ``binary_dice``: mean over cases of the Dice of ``pred > 0`` vs ``ref > 0``;
        ``multiclass_dice``: mean over cases of the mean Dice over labels ``1..num_classes-1``
        (``nan`` in binary mode); ``per_label_dice``: ``{k: mean over cases}`` (empty in binary mode);
        ``per_case``: ``[{"case", "binary_dice", "multiclass_dice", "per_label_dice"}]``;
        ``confusion``: ``num_classes x num_classes`` int64 voxel counts, rows = reference, columns =
        prediction, summed over cases (``None`` in binary mode); ``neighbour_confusion``:
        ``{k: (conf[k, k+1] + conf[k+1, k]) / (ref_k + ref_k+1)}`` for ``k = 1..num_classes-2``: the
        fraction of the voxels of levels ``k`` and ``k+1`` given the other level's label (``None`` in
        binary mode); ``neighbour_confusion_total``: all such swapped voxels / all reference
        foreground voxels; ``level_shift``: voxels of reference ``k`` predicted as ``k+1`` (up) and as
        ``k-1`` (down) over all reference foreground voxels -- a whole-column shift by one level shows
        as a large one-sided value.
        Dice uses the empty rule: reference and prediction both empty -> 1.
    """
    if label_mode not in ("multiclass", "binary"):
        raise ValueError(f"label_mode must be 'multiclass' or 'binary', got {label_mode!r}")
    if not val_cases:
        raise ValueError("evaluate needs at least one validation case")
    k = num_classes if label_mode == "multiclass" else 2
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    per_case: list[dict[str, Any]] = []
    for case in val_cases:
        ref, _ = load_reference(case)
        pred = np.asarray(predict_fn(case))
        if pred.shape != ref.shape:
            raise ValueError(f"{case.case_id}: prediction shape {pred.shape} differs from the original grid "
                             f"{ref.shape} of {case.label_path}; map the prediction back first")
        if pred.dtype.kind not in "biu":
            raise ValueError(f"{case.case_id}: prediction must be an integer label map, got dtype {pred.dtype}")
        top = int(pred.max()) if pred.size else 0
        if top >= k or (pred.size and int(pred.min()) < 0):
            raise ValueError(f"{case.case_id}: prediction values must lie in 0..{k - 1} in {label_mode} mode, "
                             f"got {int(pred.min())}..{top}")
        if int(ref.max()) >= num_classes:
            raise ValueError(f"{case.label_path}: label value {int(ref.max())} >= num_classes={num_classes}")
        code = ref.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
        conf = np.bincount(code, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
        total += conf
        n_ref, n_pred = conf.sum(1), conf.sum(0)
        tp_fg = int(conf[1:, 1:].sum())
        row: dict[str, Any] = {"case": case.case_id,
                               "binary_dice": _dice(tp_fg, int(n_ref[1:].sum()), int(n_pred[1:].sum()))}
        if label_mode == "multiclass":
            labels = {c: _dice(int(conf[c, c]), int(n_ref[c]), int(n_pred[c])) for c in range(1, num_classes)}
            row["per_label_dice"] = labels
            row["multiclass_dice"] = float(np.mean(list(labels.values())))
        else:
            row["per_label_dice"] = {}
            row["multiclass_dice"] = float("nan")
        per_case.append(row)

    out: dict[str, Any] = {
        "binary_dice": float(np.mean([r["binary_dice"] for r in per_case])),
        "multiclass_dice": float(np.mean([r["multiclass_dice"] for r in per_case])),
        "per_label_dice": {}, "per_case": per_case, "confusion": None,
        "neighbour_confusion": None, "neighbour_confusion_total": None, "level_shift": None,
    }
    if label_mode == "multiclass":
        out["per_label_dice"] = {c: float(np.mean([r["per_label_dice"][c] for r in per_case]))
                                 for c in range(1, num_classes)}
        out["confusion"] = total
        n_ref = total.sum(1)
        fg = max(int(n_ref[1:].sum()), 1)
        neigh = {}
        for c in range(1, num_classes - 1):
            denom = int(n_ref[c] + n_ref[c + 1])
            neigh[c] = float(total[c, c + 1] + total[c + 1, c]) / denom if denom else 0.0
        out["neighbour_confusion"] = neigh
        swapped = sum(int(total[c, c + 1] + total[c + 1, c]) for c in range(1, num_classes - 1))
        out["neighbour_confusion_total"] = swapped / fg
        up = sum(int(total[c, c + 1]) for c in range(1, num_classes - 1))
        down = sum(int(total[c, c - 1]) for c in range(2, num_classes))
        out["level_shift"] = {"up": up / fg, "down": down / fg}
    return out


def format_evaluation(result: dict[str, Any], names: Sequence[str] | None = None, prefix: str = "# ") -> str:
    """Printable lines: per-label Dice, neighbour confusion and the row-normalised confusion matrix."""
    lines = [f"{prefix}binary_dice {result['binary_dice']:.4f}  multiclass_dice {_fmt(result['multiclass_dice'])}"]
    if result.get("per_case"):
        lines.append(prefix + "per-case binary Dice: " + "  ".join(
            f"{r['case']} {r['binary_dice']:.3f}" for r in result["per_case"]))
    if result.get("per_label_dice"):
        nm = list(names) if names else [f"L{c}" for c in range(len(result["confusion"]))]
        lines.append(prefix + "per-label Dice: " + "  ".join(
            f"{nm[c] if c < len(nm) else c} {v:.4f}" for c, v in result["per_label_dice"].items()))
    if result.get("neighbour_confusion") is not None:
        nm = list(names) if names else ["bg"] + [f"L{c}" for c in range(1, len(result["confusion"]))]
        lines.append(prefix + "neighbour confusion (share of both levels' voxels swapped): " + "  ".join(
            f"{nm[c]}/{nm[c + 1]} {v:.4f}" for c, v in result["neighbour_confusion"].items())
            + f"  total {result['neighbour_confusion_total']:.4f}"
            + f"  (shift up {result['level_shift']['up']:.4f}, down {result['level_shift']['down']:.4f})")
        conf = result["confusion"].astype(np.float64)
        rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        lines.append(prefix + "confusion, rows = reference, columns = prediction, share of the row:")
        lines.append(prefix + "      " + " ".join(f"{n:>7}" for n in nm))
        for c, r in enumerate(rows):
            lines.append(prefix + f"{nm[c]:>5} " + " ".join(f"{v:7.4f}" for v in r))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# curve log
# --------------------------------------------------------------------------------------------------
def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


@dataclass
class CurveRow:
    """One evaluation point of a learning curve.

    ``train_seconds``: the budget clock (training only); ``wall_seconds``: since training started,
    evaluations included; ``train_loss``: mean loss of the steps since the previous row;
    ``s_per_step``: training seconds per step since the previous row; ``eval_seconds``: this
    evaluation's time. ``details`` (not printed, not in the CSV) holds the :func:`evaluate` result.
    """

    train_seconds: float
    wall_seconds: float
    steps: int
    train_loss: float
    binary_dice: float
    multiclass_dice: float
    s_per_step: float
    eval_seconds: float
    details: dict | None = field(default=None, repr=False, compare=False)


_COLUMNS = [f.name for f in fields(CurveRow) if f.name != "details"]
_WIDTHS = {"train_seconds": 13, "wall_seconds": 12, "steps": 6, "train_loss": 10, "binary_dice": 11,
           "multiclass_dice": 15, "s_per_step": 10, "eval_seconds": 12}


class CurveLog:
    """Learning curve: rows printed (aligned, header first) as they are added, CSV, summary line.

    ``CurveLog(name="peer")`` prefixes the printed rows with the name (handy when two pipelines run in
    one process); ``stream=None`` prints nothing. ``label_mode`` decides which Dice :meth:`best` ranks.
    """

    def __init__(self, name: str = "", label_mode: str = "multiclass", stream: TextIO | None = sys.stdout):
        self.name = name
        self.label_mode = label_mode
        self.stream = stream
        self.rows: list[CurveRow] = []
        self.info: dict[str, Any] = {}  # free-form facts of the run (cache time, totals ...)

    def header(self) -> str:
        pre = f"{self.name:>8} " if self.name else ""
        return pre + " ".join(f"{c:>{_WIDTHS[c]}}" for c in _COLUMNS)

    def format_row(self, row: CurveRow) -> str:
        pre = f"{self.name:>8} " if self.name else ""
        vals = {
            "train_seconds": f"{row.train_seconds:.1f}", "wall_seconds": f"{row.wall_seconds:.1f}",
            "steps": f"{row.steps:d}", "train_loss": _fmt(row.train_loss), "binary_dice": _fmt(row.binary_dice),
            "multiclass_dice": _fmt(row.multiclass_dice), "s_per_step": _fmt(row.s_per_step, 3),
            "eval_seconds": f"{row.eval_seconds:.1f}",
        }
        return pre + " ".join(f"{vals[c]:>{_WIDTHS[c]}}" for c in _COLUMNS)

    def add(self, train_seconds: float, wall_seconds: float, steps: int, train_loss: float, binary_dice: float,
            multiclass_dice: float, s_per_step: float, eval_seconds: float, details: dict | None = None) -> CurveRow:
        """Append a row and print it (the header before the first row)."""
        row = CurveRow(float(train_seconds), float(wall_seconds), int(steps), float(train_loss),
                       float(binary_dice), float(multiclass_dice), float(s_per_step), float(eval_seconds), details)
        if self.stream is not None:
            if not self.rows:
                print(self.header(), file=self.stream, flush=True)
            print(self.format_row(row), file=self.stream, flush=True)
        self.rows.append(row)
        return row

    @property
    def last(self) -> CurveRow | None:
        """The last evaluation, or ``None``."""
        return self.rows[-1] if self.rows else None

    def best(self, key: str | None = None) -> CurveRow | None:
        """Row with the highest ``key`` (default: ``multiclass_dice`` in multiclass mode, else
        ``binary_dice``); NaN values never win; ``None`` when there is no row."""
        key = key or ("multiclass_dice" if self.label_mode == "multiclass" else "binary_dice")
        scored = [r for r in self.rows if not math.isnan(getattr(r, key))]
        return max(scored, key=lambda r: getattr(r, key)) if scored else None

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the rows (without ``details``) as CSV, atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(_COLUMNS)
                for r in self.rows:
                    d = asdict(r)
                    w.writerow([d[c] for c in _COLUMNS])
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike, name: str = "", label_mode: str = "multiclass") -> "CurveLog":
        """Read a curve written by :meth:`to_csv` (for plots of earlier runs)."""
        log = cls(name=name, label_mode=label_mode, stream=None)
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                missing = [c for c in _COLUMNS if c not in rec]
                if missing:
                    raise ValueError(f"{path}: not a curve CSV (missing columns {missing})")
                log.add(**{c: float(rec[c]) for c in _COLUMNS})
        return log

    def summary_line(self, minutes: float) -> str:
        """``binary_dice=X multiclass_dice=Y steps=N minutes=M`` from the LAST evaluation (4 decimals)."""
        r = self.last
        if r is None:
            return f"binary_dice=nan multiclass_dice=nan steps=0 minutes={minutes:g}"
        return (f"binary_dice={_fmt(r.binary_dice)} multiclass_dice={_fmt(r.multiclass_dice)} "
                f"steps={r.steps} minutes={minutes:g}")
