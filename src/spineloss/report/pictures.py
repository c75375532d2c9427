"""Prediction pictures: three orthogonal slices of a case with the reference and predicted outlines.

:func:`render_case` draws, side by side, one slice per array axis of a ``D x H x W`` volume, each through
the centroid of the reference foreground (:func:`slice_indices`), the grey image windowed to its 1st-99th
percentile, the ground truth outlined in one colour (solid) and the prediction in another (dashed), so the
two stay distinguishable where they overlap and in grey-scale print or for colour-blind readers. Axes are
in millimetres (the voxel spacing sets each panel's extent), so anisotropic voxels are not squashed.
:func:`best_and_worst` picks the cases to draw from per-case scores.

Matplotlib is imported inside the functions (importing :mod:`spineloss` stays fast) and only its
object-oriented API is used (``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``), so no
display is needed, no global figure registry is touched and nothing leaks between calls.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..geometry import check_spacing

__all__ = ["GROUND_TRUTH_COLOR", "PREDICTION_COLOR", "FIGSIZE", "DPI", "slice_indices", "render_case",
           "best_and_worst"]

#: outline colours: a light blue and a magenta, far apart for the common colour-vision deficiencies
GROUND_TRUTH_COLOR = "#33c3ff"
PREDICTION_COLOR = "#ff3fa4"
#: figure size in inches and resolution: 1300 x 500 pixels, three panels that read on a laptop screen
FIGSIZE = (13.0, 5.0)
DPI = 100

_AXIS_NAMES = ("D", "H", "W")


def slice_indices(reference: np.ndarray, prediction: np.ndarray | None = None) -> tuple[int, ...]:
    """One slice index per axis, through the centroid of the reference foreground.

    The centroid is the mean voxel index of the foreground (label > 0), rounded to the nearest integer
    (``c_a = round(mean_{v in F} v_a)`` for each axis ``a``). When the reference has no foreground the
    prediction's is used, and when both are empty the volume centre (``size_a // 2``). A centroid can
    fall between separate pieces of the structure (for vertebral bodies, into an intervertebral disc):
    when the plane ``index_a = c_a`` holds no foreground voxel, the nearest plane that does is used
    instead (the lower index on a tie), so each slice shows the structure.
    """
    reference = np.asarray(reference)
    masks = [reference > 0]
    if prediction is not None:
        prediction = np.asarray(prediction)
        if prediction.shape != reference.shape:
            raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
        masks.append(prediction > 0)
    mask = next((m for m in masks if m.any()), None)
    if mask is None:
        return tuple(int(s // 2) for s in reference.shape)
    coords = np.nonzero(mask)
    out = []
    for axis, c in enumerate(coords):
        centre = int(np.clip(np.rint(c.mean()), 0, reference.shape[axis] - 1))
        occupied = np.unique(c)
        if centre not in occupied:
            centre = int(occupied[np.argmin(np.abs(occupied - centre))])  # argmin: first (lower) on a tie
        out.append(centre)
    return tuple(out)


def _as_labels(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64, copy=False)
    if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.rint(array)):
        return array.astype(np.int64)
    raise ValueError(f"{name} must be an integer label map (0 = background), got dtype {array.dtype}"
                     + (" with non-integer values" if np.issubdtype(array.dtype, np.floating) else "")
                     + "; pass the arg-max label map, not probabilities or logits")


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def render_case(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray,
                spacing: Sequence[float], path: str | os.PathLike, title: str = "", *,
                per_label: bool = True) -> Path:
    """Save a PNG of three orthogonal slices with the reference and predicted outlines; return its path.

    ``image``: ``D x H x W`` intensities, or ``C x D x H x W`` (channel 0 is drawn). ``reference`` and
    ``prediction``: integer label maps of shape ``D x H x W`` (0 = background). ``spacing``: voxel size in
    mm along (D, H, W). Panel ``a`` shows the plane ``index_a = i_a`` with ``i`` from
    :func:`slice_indices` (through the reference centroid), the image clipped to its 1st-99th percentile
    over the whole volume (one grey scale for the three panels), and the outline of the foreground union
    (``label > 0``, the 0.5 iso-line of the mask, i.e. along voxel edges) of the ground truth (solid) and of
    the prediction (dashed). With ``per_label`` and more than one foreground label, the boundary of each
    label is drawn too, thinner, so a wrong level assignment shows. The figure is ``FIGSIZE`` at ``DPI``
    (1300 x 500 pixels), the file is written atomically and parent folders are created.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image = np.asarray(image)
    if image.ndim == 4:
        image = image[0]
    if image.ndim != 3:
        raise ValueError(f"image must be D x H x W or C x D x H x W, got shape {image.shape}")
    reference = _as_labels("reference", reference)
    prediction = _as_labels("prediction", prediction)
    if reference.shape != image.shape or prediction.shape != image.shape:
        raise ValueError(f"shapes differ: image {image.shape} (spatial), reference {reference.shape}, "
                         f"prediction {prediction.shape}; all three must be the same D x H x W grid "
                         f"(resample the prediction to the image grid first)")
    spacing = check_spacing(spacing, 3, "render_case")
    image = image.astype(np.float64, copy=False)
    vmin, vmax = _window(image)
    index = slice_indices(reference, prediction)
    n_labels = max(np.unique(reference[reference > 0]).size, np.unique(prediction[prediction > 0]).size)

    # a fixed layout (not "constrained": that draws the figure twice, doubling the time to ~1 s)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw=dict(left=0.05, right=0.99, bottom=0.17, top=0.86 if title else 0.91,
                                                 wspace=0.25))
    for axis, ax in enumerate(axes):
        take = [slice(None)] * 3
        take[axis] = index[axis]
        rows_axis, cols_axis = [a for a in range(3) if a != axis]
        height = image.shape[rows_axis] * spacing[rows_axis]
        width = image.shape[cols_axis] * spacing[cols_axis]
        ax.imshow(image[tuple(take)], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest",
                  extent=(0.0, width, height, 0.0), aspect="equal")
        for labels, color, style in ((reference, GROUND_TRUTH_COLOR, "solid"),
                                     (prediction, PREDICTION_COLOR, "dashed")):
            plane = labels[tuple(take)]
            _outline(ax, plane > 0, spacing[rows_axis], spacing[cols_axis], color, style, 1.8)
            if per_label and n_labels > 1:
                for value in np.unique(plane[plane > 0]):
                    _outline(ax, plane == value, spacing[rows_axis], spacing[cols_axis], color, style, 0.8)
        ax.set_xlim(0.0, width)
        ax.set_ylim(height, 0.0)
        ax.set_title(f"{_AXIS_NAMES[axis]} slice {index[axis]} / {image.shape[axis] - 1}", fontsize=12)
        ax.set_xlabel(f"{_AXIS_NAMES[cols_axis]} (mm)", fontsize=11)
        ax.set_ylabel(f"{_AXIS_NAMES[rows_axis]} (mm)", fontsize=11)
        ax.tick_params(labelsize=9)
    empty_ref = "" if reference.any() else " (empty)"
    empty_pred = "" if prediction.any() else " (empty)"
    handles = [Line2D([], [], color=GROUND_TRUTH_COLOR, linestyle="solid", linewidth=2.2,
                      label=f"ground truth{empty_ref}"),
               Line2D([], [], color=PREDICTION_COLOR, linestyle="dashed", linewidth=2.2,
                      label=f"prediction{empty_pred}")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=11, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13, y=0.98)

    from .plots import write_png
    return write_png(fig, path)


def _outline(ax, mask: np.ndarray, row_spacing: float, col_spacing: float, color: str, style: str,
             width: float) -> None:
    """Draw the 0.5 iso-line of a 2D mask in mm coordinates (voxel centres at (i + 0.5) * spacing).

    The mask is padded by one background voxel so structures touching the border get a closed outline
    (along the image edge); an empty mask draws nothing.
    """
    if not mask.any():
        return
    padded = np.pad(mask.astype(np.float32), 1)
    ys = (np.arange(padded.shape[0]) - 0.5) * row_spacing
    xs = (np.arange(padded.shape[1]) - 0.5) * col_spacing
    ax.contour(xs, ys, padded, levels=[0.5], colors=[color], linestyles=style, linewidths=width)


def best_and_worst(case_scores: Mapping[str, float], higher_is_better: bool = True) -> tuple[str, str]:
    """``(best case id, worst case id)`` by score; NaN (or ``None``) ranks as the worst.

    Ties, among equal scores or among NaN, go to the smallest case id, so the choice is deterministic.
    Raises ``ValueError`` for an empty mapping.
    """
    if not case_scores:
        raise ValueError("no case scores given (need at least one case to pick the best and worst)")
    sign = -1.0 if higher_is_better else 1.0

    def badness(item: tuple[str, float]) -> tuple[int, float]:
        value = math.nan if item[1] is None else float(item[1])
        return (1, 0.0) if math.isnan(value) else (0, sign * value)

    items = sorted(case_scores.items(), key=lambda kv: kv[0])
    best = min(items, key=lambda kv: badness(kv))[0]  # min/max return the first of equal keys
    worst = max(items, key=lambda kv: badness(kv))[0]
    return best, worst
