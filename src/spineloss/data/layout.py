"""Read and validate nnU-Net v2 and Medical Segmentation Decathlon (MSD) data sets.

Two folder layouts are understood; ``dataset.json`` tells them apart.

nnU-Net v2 (``channel_names`` and ``file_ending`` present)::

    root/dataset.json   {"channel_names": {"0": "T2"},
                         "labels": {"background": 0, "L1": 1, ...},   # name -> int
                         "numTraining": 40, "file_ending": ".nii.gz"}
    root/imagesTr/<case>_0000.nii.gz     one 3D file per channel: _0000, _0001, ...
    root/labelsTr/<case>.nii.gz

MSD (a ``training`` list present)::

    root/dataset.json   {"modality": {"0": "MRI"},
                         "labels": {"0": "background", "1": "spleen"},  # int -> name
                         "numTraining": 41,
                         "training": [{"image": "./imagesTr/x.nii.gz",
                                       "label": "./labelsTr/x.nii.gz"}, ...]}

Every case is checked before any training, and every problem is a ``ValueError`` (or, from
:func:`validate_dataset`, a line of the report) that starts with the path of the offending file
and says what is wrong and how to fix it: image without label, label without image, shape or affine
mismatch, undeclared label values, non-integer labels, non-finite image values, a 4D file where a
3D volume is expected, an unreadable file, an empty data set, region-based labels.

Axis convention: arrays keep the voxel order stored in the file (NIfTI axes i, j, k), written
``D x H x W`` here; nothing is reoriented, resampled, clipped or dropped.
:func:`spacing_from_affine` gives the voxel size along those same three axes.

Typical use::

    info = check_dataset("/data/Dataset001_Lumbar")     # raises ValueError listing every problem
    image, label, affine = load_case(info.cases[0], info)
    label = to_label_mode(label, "binary")
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence, TextIO

import numpy as np

__all__ = [
    "AFFINE_ATOL_MM",
    "LABEL_MODES",
    "LAYOUTS",
    "Case",
    "CaseSummary",
    "DatasetInfo",
    "ValidationReport",
    "check_dataset",
    "load_case",
    "read_dataset",
    "run_check",
    "spacing_from_affine",
    "to_label_mode",
    "validate_dataset",
]

LAYOUTS: tuple[str, ...] = ("nnunetv2", "msd")
"""Folder layouts :func:`read_dataset` recognises."""

LABEL_MODES: tuple[str, ...] = ("multiclass", "binary")
"""``multiclass``: labels as declared in dataset.json; ``binary``: every foreground label merged into 1."""

AFFINE_ATOL_MM: float = 1e-3
"""Absolute tolerance (mm) when comparing the affines of the channels and the label of one case.

NIfTI stores its sform/qform in float32 and tools convert between the quaternion (qform) and the
matrix (sform) form, so the affines of an image and of a label written by different programs differ
by rounding noise of about 1e-6..1e-5 mm. 1e-3 mm is two orders of magnitude above that noise and two
orders of magnitude below any real voxel size (MRI voxels are >= 0.1 mm), so it tolerates
round-off while still catching a real mismatch: another spacing, origin, flip or axis order.
"""

SUPPORTED_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii")
"""File endings that can be read (NIfTI, through nibabel)."""

_MAX_LABEL = 32767  # labels are returned as uint8 (max <= 255) or int16
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One training case: its image file(s), one per channel, and its label file.

    nnU-Net v2 stores channel ``k`` of case ``x`` in ``imagesTr/x_000k<file_ending>``; MSD stores a
    single-channel 3D image (multi-channel 4D MSD images are not supported). ``label_path`` is
    ``None`` only for unlabelled cases (never produced by :func:`read_dataset`, which reads training
    cases).
    """

    case_id: str
    image_paths: tuple[pathlib.Path, ...]
    label_path: pathlib.Path | None


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` declares plus the list of cases found on disk.

    Attributes:
        root: the data set folder (the one holding ``dataset.json``).
        name: ``dataset.json`` ``name``, or the folder name.
        layout: ``"nnunetv2"`` or ``"msd"``.
        labels: label name -> integer value, sorted by value, always including a background 0.
        channel_names: channel index (``"0"``, ``"1"``...) -> name (MSD: its ``modality``).
        file_ending: ``".nii.gz"`` or ``".nii"``.
        cases: the complete (image + label) cases, sorted by ``case_id``.
    """

    root: pathlib.Path
    name: str
    layout: str
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    cases: tuple[Case, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes in ``multiclass`` mode: the largest declared label value + 1."""
        return max(self.labels.values()) + 1

    @property
    def num_channels(self) -> int:
        """Number of image channels (files per case for nnU-Net v2)."""
        return len(self.channel_names)

    def num_classes_for(self, label_mode: str) -> int:
        """Number of label values after :func:`to_label_mode`: ``num_classes`` or 2 for ``binary``."""
        _check_label_mode(label_mode)
        return 2 if label_mode == "binary" else self.num_classes

    def label_names(self, label_mode: str) -> dict[int, str]:
        """Label value -> name for ``label_mode``.

        ``multiclass``: as declared, e.g. ``{0: "background", 1: "L1", ...}``;
        ``binary``: ``{0: <background name>, 1: "foreground"}``.
        """
        _check_label_mode(label_mode)
        by_value = {value: name for name, value in sorted(self.labels.items(), key=lambda kv: kv[1])}
        if label_mode == "multiclass":
            return by_value
        return {0: by_value.get(0, "background"), 1: "foreground"}


@dataclass(frozen=True)
class CaseSummary:
    """Per-case facts gathered by :func:`validate_dataset` (``None``/empty where the case failed)."""

    case_id: str
    shape: tuple[int, int, int] | None
    spacing: tuple[float, float, float] | None
    label_counts: dict[int, int]
    intensity_range: tuple[tuple[float, float], ...]


@dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`.

    Attributes:
        root: the data set folder.
        info: the parsed data set, or ``None`` when ``dataset.json`` itself could not be used.
        problems: one message per problem, each starting with the path of the file concerned.
        cases: a :class:`CaseSummary` per case that was loaded (also for cases with problems).
    """

    root: pathlib.Path
    info: DatasetInfo | None
    problems: list[str] = field(default_factory=list)
    cases: list[CaseSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (and there is at least one case)."""
        return not self.problems and self.info is not None and len(self.cases) > 0

    @property
    def n_cases(self) -> int:
        """Number of cases examined."""
        return len(self.cases)

    @property
    def shapes(self) -> Counter:
        """Counter: voxel shape (D, H, W) -> number of cases."""
        return Counter(c.shape for c in self.cases if c.shape is not None)

    @property
    def spacings(self) -> Counter:
        """Counter: voxel spacing in mm (rounded to 1e-4) -> number of cases."""
        return Counter(
            tuple(round(s, 4) for s in c.spacing) for c in self.cases if c.spacing is not None
        )

    @property
    def label_voxels(self) -> dict[int, int]:
        """Label value -> total number of voxels over all cases."""
        total: Counter = Counter()
        for c in self.cases:
            total.update(c.label_counts)
        return dict(sorted(total.items()))

    @property
    def label_cases(self) -> dict[int, int]:
        """Label value -> number of cases in which it occurs."""
        seen: Counter = Counter()
        for c in self.cases:
            seen.update(v for v, n in c.label_counts.items() if n > 0)
        return dict(sorted(seen.items()))

    def summary_text(self, include_problems: bool = True) -> str:
        """A human-readable summary: cases, channels, shapes, spacings, intensity range, label counts.

        With ``include_problems`` (default) the problems, if any, are listed at the end.
        """
        lines: list[str] = []
        info = self.info
        if info is None:
            lines.append(f"Dataset at {self.root}: dataset.json could not be used")
        else:
            lines.append(f"Dataset: {info.name} ({info.layout}) at {info.root}")
            channels = ", ".join(f"{k}: {v}" for k, v in info.channel_names.items())
            lines.append(
                f"Cases: {self.n_cases}   channels: {info.num_channels} ({channels})"
                f"   file ending: {info.file_ending}"
            )
            lines.append("Shapes (voxels, D x H x W as stored):")
            lines.extend(_counter_lines(self.shapes, lambda s: "x".join(str(v) for v in s)))
            lines.append("Spacings (mm):")
            lines.extend(_counter_lines(self.spacings, lambda s: "x".join(f"{v:g}" for v in s)))
            ranges = [c.intensity_range for c in self.cases if c.intensity_range]
            if ranges:
                lines.append("Intensity range:")
                for ch, ch_name in enumerate(info.channel_names.values()):
                    lows = [r[ch][0] for r in ranges if len(r) > ch]
                    highs = [r[ch][1] for r in ranges if len(r) > ch]
                    if lows:
                        lines.append(f"  channel {ch} ({ch_name}): {min(lows):g} .. {max(highs):g}")
            voxels, present = self.label_voxels, self.label_cases
            total = sum(voxels.values()) or 1
            lines.append("Labels (voxels over all cases, cases containing the label):")
            names = info.label_names("multiclass")
            names.update({v: "(undeclared)" for v in voxels if v not in names})
            for value, name in sorted(names.items()):
                n = voxels.get(value, 0)
                lines.append(
                    f"  {value:>3} {name:<16} {n:>12d} voxels ({100.0 * n / total:6.2f}%)"
                    f"  in {present.get(value, 0)}/{self.n_cases} cases"
                )
            fg = sum(n for v, n in voxels.items() if v > 0)
            lines.append(f"  foreground (binary mode): {fg} voxels ({100.0 * fg / total:.2f}%)")
        if include_problems and self.problems:
            lines.append(f"Problems ({len(self.problems)}):")
            lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary_text()


def _counter_lines(counter: Counter, fmt, limit: int = 10) -> list[str]:
    items = counter.most_common()
    out = [f"  {fmt(key)}: {n} case{'s' if n != 1 else ''}" for key, n in items[:limit]]
    if len(items) > limit:
        out.append(f"  ... and {len(items) - limit} more")
    if not items:
        out.append("  (none)")
    return out


# --------------------------------------------------------------------------------------------------
# Small public helpers
# --------------------------------------------------------------------------------------------------
def _check_label_mode(mode: str) -> None:
    if mode not in LABEL_MODES:
        raise ValueError(f"Unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}.")


def to_label_mode(label: np.ndarray, mode: str) -> np.ndarray:
    """Convert an integer label map to ``mode``.

    ``multiclass``: returned unchanged (the same array); ``binary``: every foreground label
    merged, ``(label > 0).astype(uint8)`` (as in the study). Any other mode raises ``ValueError``.
    """
    _check_label_mode(mode)
    if mode == "multiclass":
        return label
    return (np.asarray(label) > 0).astype(np.uint8)


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel size (mm) along the three voxel axes: the column norms of ``affine[:3, :3]``.

    Works for any rotation/flip in the affine (not just its diagonal). ``affine`` is a 4x4 (or 3x4 /
    3x3) matrix; anything else raises ``ValueError``.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 3 or a.shape[1] < 3:
        raise ValueError(f"Expected a 4x4 affine matrix, got an array of shape {a.shape}.")
    norms = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    return (float(norms[0]), float(norms[1]), float(norms[2]))


# --------------------------------------------------------------------------------------------------
# Reading dataset.json and listing the cases (cheap: no volume is loaded)
# --------------------------------------------------------------------------------------------------
class _Fatal(Exception):
    """A problem after which the folder cannot be scanned further."""


def _resolve_root(root: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(root).expanduser()
    if path.name == "dataset.json" and path.is_file():
        path = path.parent
    return path.absolute()


def _visible_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Regular files of ``folder``, sorted, hidden files (``.name``) ignored."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _nifti_ending(name: str) -> str | None:
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def _load_json(json_path: pathlib.Path) -> dict:
    if not json_path.is_file():
        raise _Fatal(
            f"{json_path}: missing: a data set folder needs a dataset.json "
            "(nnU-Net v2: channel_names, labels, numTraining, file_ending; MSD: labels, modality, training)"
        )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Fatal(f"{json_path}: unreadable: not valid JSON ({exc}); fix the file") from exc
    if not isinstance(data, dict):
        raise _Fatal(f"{json_path}: must hold a JSON object, got {type(data).__name__}")
    return data


def _with_background(labels: dict[str, int], json_path: pathlib.Path) -> dict[str, int]:
    """Sort by value, check uniqueness and range, and add ``background: 0`` when no label is 0."""
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if value < 0 or value > _MAX_LABEL:
            raise _Fatal(
                f"{json_path}: label {name!r} has value {value}; label values must be integers "
                f"between 0 and {_MAX_LABEL}"
            )
        if value in seen:
            raise _Fatal(
                f"{json_path}: labels {seen[value]!r} and {name!r} both have value {value}; "
                "give every label its own value"
            )
        seen[value] = name
    if 0 not in seen:
        if "background" in labels:
            raise _Fatal(f"{json_path}: label 'background' must have value 0")
        seen[0] = "background"
    return {name: value for value, name in sorted(seen.items())}


def _parse_nnunet_labels(raw: Any, json_path: pathlib.Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise _Fatal(f"{json_path}: 'labels' must be a non-empty object name -> integer, e.g. "
                     '{"background": 0, "L1": 1}')
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise _Fatal(
                f"{json_path}: label {name!r} is {value!r}: region-based labels (a list of label "
                "values per region) are not supported; declare one integer per label, e.g. "
                f'"{name}": 1'
            )
        if name == "ignore":
            raise _Fatal(
                f"{json_path}: the nnU-Net 'ignore' label (value {value!r}) is not supported; remove it "
                "and relabel those voxels"
            )
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Fatal(f"{json_path}: label {name!r} has value {value!r}; it must be an integer")
        labels[str(name)] = value
    return _with_background(labels, json_path)


def _parse_msd_labels(raw: Any, json_path: pathlib.Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise _Fatal(f"{json_path}: 'labels' must be a non-empty object value -> name, e.g. "
                     '{"0": "background", "1": "spleen"}')
    labels: dict[str, int] = {}
    for key, name in raw.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise _Fatal(
                f"{json_path}: MSD label key {key!r} is not an integer; MSD labels map "
                '"0" -> "background", "1" -> "<name>"'
            ) from None
        if isinstance(name, (list, tuple)):
            raise _Fatal(f"{json_path}: label {key!r} is {name!r}: region-based labels are not supported")
        name = str(name)
        if name in labels:
            raise _Fatal(f"{json_path}: label name {name!r} is used twice; give each label its own name")
        labels[name] = value
    return _with_background(labels, json_path)


def _parse_channels(raw: Any, key: str, json_path: pathlib.Path) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        raise _Fatal(f"{json_path}: '{key}' must be a non-empty object, e.g. {{\"0\": \"MRI\"}}")
    try:
        items = sorted(((int(k), str(v)) for k, v in raw.items()), key=lambda kv: kv[0])
    except (TypeError, ValueError):
        raise _Fatal(f"{json_path}: '{key}' keys must be channel numbers \"0\", \"1\", ...") from None
    if [k for k, _ in items] != list(range(len(items))):
        raise _Fatal(
            f"{json_path}: '{key}' keys must be consecutive channel numbers starting at \"0\", got "
            f"{sorted(raw)}"
        )
    return {str(k): v for k, v in items}


def _check_num_training(data: dict, n_found: int, json_path: pathlib.Path, problems: list[str]) -> None:
    declared = data.get("numTraining")
    if declared is None:
        return
    if isinstance(declared, bool) or not isinstance(declared, int):
        problems.append(f"{json_path}: numTraining is {declared!r}; it must be an integer")
    elif declared != n_found:
        problems.append(
            f"{json_path}: numTraining is {declared} but {n_found} complete case(s) (image + label) "
            "were found; fix numTraining or add the missing cases"
        )


def _scan_nnunet(root: pathlib.Path, data: dict, json_path: pathlib.Path,
                 problems: list[str]) -> DatasetInfo:
    labels = _parse_nnunet_labels(data.get("labels"), json_path)
    channels = _parse_channels(data.get("channel_names"), "channel_names", json_path)
    ending = data.get("file_ending")
    if ending not in SUPPORTED_ENDINGS:
        raise _Fatal(
            f"{json_path}: file_ending {ending!r} is not supported; only NIfTI "
            f"({', '.join(SUPPORTED_ENDINGS)}) can be read: convert the files and set file_ending"
        )
    if "dataset" in data:
        raise _Fatal(f"{json_path}: an explicit 'dataset' file list is not supported; put the files "
                     "in imagesTr/ and labelsTr/ instead")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise _Fatal(f"{folder}: folder missing; nnU-Net v2 keeps training images in imagesTr/ "
                         "and labels in labelsTr/")
    n_channels = len(channels)

    image_files: dict[str, dict[int, pathlib.Path]] = {}
    for path in _visible_files(images_dir):
        if not path.name.endswith(ending):
            if _nifti_ending(path.name):
                problems.append(f"{path}: file ending does not match dataset.json file_ending "
                                f"{ending!r}; convert/rename the file or fix file_ending")
            continue
        stem = path.name[: -len(ending)]
        match = _CHANNEL_FILE.match(stem)
        if match is None:
            problems.append(
                f"{path}: image file name must be <case>_<4-digit channel>{ending}, "
                f"e.g. {stem}_0000{ending}; rename it"
            )
            continue
        channel = int(match["channel"])
        if channel >= n_channels:
            problems.append(
                f"{path}: channel {channel} is not declared in dataset.json channel_names "
                f"({n_channels} channel(s)); declare it or remove the file"
            )
            continue
        image_files.setdefault(match["case"], {})[channel] = path

    label_files: dict[str, pathlib.Path] = {}
    for path in _visible_files(labels_dir):
        if not path.name.endswith(ending):
            if _nifti_ending(path.name):
                problems.append(f"{path}: file ending does not match dataset.json file_ending "
                                f"{ending!r}; convert/rename the file or fix file_ending")
            continue
        label_files[path.name[: -len(ending)]] = path

    cases: list[Case] = []
    for case_id in sorted(set(image_files) | set(label_files)):
        files = image_files.get(case_id, {})
        label = label_files.get(case_id)
        if not files:
            problems.append(
                f"{label}: label without image: {images_dir / (case_id + '_0000' + ending)} does not "
                "exist; add the image or remove the label"
            )
            continue
        missing = [c for c in range(n_channels) if c not in files]
        if missing:
            for c in missing:
                problems.append(
                    f"{images_dir / f'{case_id}_{c:04d}{ending}'}: missing channel {c} "
                    f"({channels[str(c)]}) of case {case_id!r}; add the file"
                )
            continue
        if label is None:
            problems.append(
                f"{files[0]}: image without label: {labels_dir / (case_id + ending)} does not exist; "
                "add the label or remove the image"
            )
            continue
        cases.append(Case(case_id, tuple(files[c] for c in range(n_channels)), label))

    if not cases and not problems:
        raise _Fatal(
            f"{images_dir}: empty dataset: no training images ending in {ending!r}; add "
            f"<case>_0000{ending} images and <case>{ending} labels"
        )
    _check_num_training(data, len(cases), json_path, problems)
    return DatasetInfo(
        root=root,
        name=str(data.get("name") or root.name),
        layout="nnunetv2",
        labels=labels,
        channel_names=channels,
        file_ending=ending,
        cases=tuple(cases),
    )


def _msd_path(root: pathlib.Path, rel: Any) -> pathlib.Path:
    return pathlib.Path(os.path.normpath(root / str(rel)))


def _scan_msd(root: pathlib.Path, data: dict, json_path: pathlib.Path,
              problems: list[str]) -> DatasetInfo:
    labels = _parse_msd_labels(data.get("labels"), json_path)
    modality = data.get("modality")
    channels = _parse_channels(modality, "modality", json_path) if modality else {"0": "image"}
    if len(channels) > 1:
        raise _Fatal(
            f"{json_path}: {len(channels)} modalities {list(channels.values())}: multi-channel 4D MSD "
            "images are not supported yet; convert the data set to nnU-Net v2 (one 3D file per "
            "channel, e.g. with nnUNetv2_convert_MSD_dataset)"
        )
    training = data.get("training")
    if not isinstance(training, list):
        raise _Fatal(f"{json_path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}")
    if not training:
        raise _Fatal(f"{json_path}: empty dataset: 'training' lists no cases; add "
                     '{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"} entries')

    cases: list[Case] = []
    endings: list[str] = []
    referenced: set[pathlib.Path] = set()
    seen_ids: dict[str, pathlib.Path] = {}
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not entry.get("image"):
            problems.append(f"{json_path}: training[{i}] must be an object with 'image' and 'label' paths")
            continue
        image = _msd_path(root, entry["image"])
        referenced.add(image)
        ending = _nifti_ending(image.name)
        if ending is None:
            problems.append(f"{image}: unsupported file type (training[{i}]); only NIfTI "
                            f"({', '.join(SUPPORTED_ENDINGS)}) can be read")
            continue
        case_id = image.name[: -len(ending)]
        if not image.is_file():
            hint = ""
            if image.with_name(case_id + "_0000" + ending).is_file():
                hint = (" (a _0000 file exists: this looks like an nnU-Net v1 folder; convert it with "
                        "nnUNetv2_convert_old_nnUNet_dataset)")
            problems.append(f"{image}: listed in dataset.json training[{i}] but the file does not "
                            f"exist{hint}")
            continue
        label_rel = entry.get("label")
        if not label_rel:
            problems.append(f"{image}: image without label: training[{i}] has no 'label'; add one")
            continue
        label = _msd_path(root, label_rel)
        referenced.add(label)
        if not label.is_file():
            problems.append(f"{image}: image without label: {label} (training[{i}]) does not exist; "
                            "add the label or remove the entry")
            continue
        if case_id in seen_ids:
            problems.append(f"{image}: case {case_id!r} is listed twice in dataset.json training "
                            f"(also {seen_ids[case_id]}); remove the duplicate")
            continue
        seen_ids[case_id] = image
        endings.append(ending)
        cases.append(Case(case_id, (image,), label))

    for folder, what in ((root / "imagesTr", "image without label"),
                         (root / "labelsTr", "label without image")):
        if not folder.is_dir():
            continue
        for path in _visible_files(folder):
            if _nifti_ending(path.name) and pathlib.Path(os.path.normpath(path)) not in referenced:
                problems.append(f"{path}: {what}: the file is not listed in dataset.json 'training'; "
                                "list it (with its partner file) or remove it")

    _check_num_training(data, len(cases), json_path, problems)
    cases.sort(key=lambda c: c.case_id)
    return DatasetInfo(
        root=root,
        name=str(data.get("name") or root.name),
        layout="msd",
        labels=labels,
        channel_names=channels,
        file_ending=Counter(endings).most_common(1)[0][0] if endings else ".nii.gz",
        cases=tuple(cases),
    )


def _scan(root: str | os.PathLike) -> tuple[DatasetInfo | None, list[str]]:
    """Parse dataset.json and list the cases; returns the info (None if fatal) and the problems."""
    path = _resolve_root(root)
    problems: list[str] = []
    try:
        if not path.is_dir():
            raise _Fatal(f"{path}: data set folder does not exist")
        json_path = path / "dataset.json"
        data = _load_json(json_path)
        if "channel_names" in data and "file_ending" in data:
            info = _scan_nnunet(path, data, json_path, problems)
        elif "training" in data:
            info = _scan_msd(path, data, json_path, problems)
        else:
            raise _Fatal(
                f"{json_path}: layout not recognised: nnU-Net v2 needs 'channel_names' and "
                "'file_ending', MSD needs a 'training' list"
            )
    except _Fatal as exc:
        problems.append(str(exc))
        return None, problems
    return info, problems


def _problem_error(root: pathlib.Path, problems: Sequence[str], what: str = "Dataset") -> ValueError:
    if len(problems) == 1:
        return ValueError(problems[0])
    listed = "\n".join(f"  - {p}" for p in problems)
    return ValueError(f"{what} {root} has {len(problems)} problems:\n{listed}")


def read_dataset(root: str | os.PathLike) -> DatasetInfo:
    """Read ``root/dataset.json``, detect the layout and list the training cases.

    Checks the folder structure only (cheap: no volume is loaded): dataset.json present and
    valid, labels declared as integers (region-based and ``ignore`` labels are refused), every image
    has a label and every label an image, every channel file present, ``numTraining`` matches, at
    least one case. Any problem raises a ``ValueError`` naming the file and what to fix (all
    structural problems at once). ``root`` may also be the path of ``dataset.json`` itself.
    """
    info, problems = _scan(root)
    if problems or info is None:
        raise _problem_error(_resolve_root(root), problems)
    return info


# --------------------------------------------------------------------------------------------------
# Loading one case
# --------------------------------------------------------------------------------------------------
def _read_nifti(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Array (scaling applied, stored dtype kept where possible) and float64 affine of a NIfTI file."""
    import nibabel as nib  # heavy-ish import kept out of `import spineloss`

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt files (EOFError, zlib.error...)
        raise ValueError(
            f"{path}: unreadable: cannot be read as NIfTI ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from exc
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: unreadable: no 4x4 affine in the header")
    return np.asarray(data), affine


def _as_3d(data: np.ndarray, path: pathlib.Path, kind: str, layout: str | None) -> np.ndarray:
    """Drop trailing length-1 axes (X x Y x Z x 1 is a 3D volume); refuse 2D and true 4D."""
    if data.ndim < 3:
        raise ValueError(f"{path}: {kind} has {data.ndim} dimension(s) (shape {data.shape}); "
                         "a 3D volume is expected")
    if data.ndim > 3:
        if all(s == 1 for s in data.shape[3:]):
            return data.reshape(data.shape[:3])
        if kind == "label":
            hint = "a label must be one 3D integer map"
        elif layout == "msd":
            hint = ("multi-channel 4D MSD images are not supported yet; convert the data set to "
                    "nnU-Net v2 (one 3D file per channel)")
        else:
            hint = "nnU-Net v2 expects one 3D file per channel (<case>_0000, <case>_0001, ...)"
        raise ValueError(f"{path}: {kind} is {data.ndim}D (shape {data.shape}) where a 3D volume is "
                         f"expected; {hint}")
    return data


def _image_to_float32(data: np.ndarray, path: pathlib.Path) -> np.ndarray:
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{path}: image data type {data.dtype} is not a real number type; "
                         "save the image as integers or floats")
    image = data.astype(np.float32)
    if data.dtype.kind == "f":
        finite = np.isfinite(image)
        if not finite.all():
            n_nan = int(np.isnan(image).sum())
            n_inf = int(image.size - finite.sum()) - n_nan
            raise ValueError(
                f"{path}: image has non-finite values ({n_nan} NaN, {n_inf} infinite, as float32); "
                "replace them (e.g. with 0) before training"
            )
    return image


def _label_values(data: np.ndarray, path: pathlib.Path) -> tuple[np.ndarray, dict[int, int]]:
    """Integer label map (int64 or the stored int type) and its value -> voxel count."""
    kind = data.dtype.kind
    if kind == "b":
        data = data.astype(np.uint8)
    elif kind == "f":
        if not np.isfinite(data).all():
            raise ValueError(f"{path}: label has NaN or infinite values; a label map must hold "
                             "integer class values")
        rounded = np.round(data)
        off = data != rounded
        if off.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(data[off])[:5])
            raise ValueError(
                f"{path}: label has non-integer values (e.g. {examples}); a label map must hold integer "
                "class values (was it resampled with linear interpolation? use nearest neighbour)"
            )
        data = rounded.astype(np.int64)
    elif kind not in "iu":
        raise ValueError(f"{path}: label data type {data.dtype} is not an integer type")
    low, high = int(data.min()), int(data.max())
    if low < 0:
        negatives = ", ".join(str(v) for v in np.unique(data[data < 0])[:5])
        raise ValueError(f"{path}: label has negative values ({negatives}); label values must be "
                         "declared integers >= 0")
    if high <= 1 << 16:
        flat = data.ravel()
        if not np.can_cast(flat.dtype, np.intp):  # e.g. uint64: bincount refuses unsafe casts
            flat = flat.astype(np.intp)
        counts = np.bincount(flat, minlength=high + 1)
        values = np.flatnonzero(counts)
        table = {int(v): int(counts[v]) for v in values}
    else:
        values, counts = np.unique(data, return_counts=True)
        table = {int(v): int(n) for v, n in zip(values, counts)}
    return data, table


def _grid_problems(path: pathlib.Path, kind: str, shape: tuple, affine: np.ndarray,
                   ref_path: pathlib.Path, ref_shape: tuple, ref_affine: np.ndarray) -> list[str]:
    if shape != ref_shape:
        return [
            f"{path}: shape mismatch: {kind} shape {shape} differs from {ref_path.name} shape "
            f"{ref_shape}; the files of a case must share one voxel grid (resample the {kind})"
        ]
    if not np.allclose(affine, ref_affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(affine - ref_affine).max())
        sp = "x".join(f"{s:g}" for s in spacing_from_affine(affine))
        ref_sp = "x".join(f"{s:g}" for s in spacing_from_affine(ref_affine))
        return [
            f"{path}: affine mismatch: {kind} affine differs from {ref_path.name} by up to {diff:.4g} mm "
            f"(tolerance {AFFINE_ATOL_MM:g} mm; spacing {sp} vs {ref_sp} mm, origin "
            f"{np.round(affine[:3, 3], 3).tolist()} vs {np.round(ref_affine[:3, 3], 3).tolist()}); "
            "the files of a case must share one voxel grid (fix the header or resample)"
        ]
    return []


def _affine_problems(path: pathlib.Path, affine: np.ndarray) -> list[str]:
    spacing = spacing_from_affine(affine)
    if not np.isfinite(affine).all() or min(spacing) <= 0.0:
        return [f"{path}: invalid affine: voxel spacing {spacing}; fix the NIfTI header"]
    return []


def _load_case_impl(case: Case, info: DatasetInfo | None):
    """Load and check one case; returns (image|None, label|None, affine|None, summary, problems)."""
    layout = info.layout if info is not None else None
    problems: list[str] = []
    channels: list[np.ndarray] = []
    ranges: list[tuple[float, float]] = []
    ref: tuple[pathlib.Path, tuple, np.ndarray] | None = None

    if info is not None and len(case.image_paths) != info.num_channels:
        problems.append(
            f"{case.image_paths[0] if case.image_paths else case.case_id}: case {case.case_id!r} has "
            f"{len(case.image_paths)} image file(s) but dataset.json declares {info.num_channels} channel(s)"
        )
    for path in case.image_paths:
        try:
            data, affine = _read_nifti(path)
            data = _as_3d(data, path, "image", layout)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        bad_affine = _affine_problems(path, affine)
        problems.extend(bad_affine)
        if ref is None:
            if not bad_affine:
                ref = (path, data.shape, affine)
        else:
            problems.extend(_grid_problems(path, "image", data.shape, affine, *ref))
        try:
            volume = _image_to_float32(data, path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        channels.append(volume)
        ranges.append((float(volume.min()), float(volume.max())) if volume.size else (0.0, 0.0))

    label_out: np.ndarray | None = None
    counts: dict[int, int] = {}
    if case.label_path is not None:
        path = case.label_path
        try:
            data, affine = _read_nifti(path)
            label, counts = _label_values(_as_3d(data, path, "label", layout), path)
        except ValueError as exc:
            problems.append(str(exc))
        else:
            grid = _affine_problems(path, affine)
            if ref is not None and not grid:
                grid = _grid_problems(path, "label", label.shape, affine, *ref)
            problems.extend(grid)
            high = max(counts) if counts else 0
            if info is not None:
                declared = set(info.labels.values())
                undeclared = sorted(set(counts) - declared)
                if undeclared:
                    names = ", ".join(f"{v} {n}" for v, n in info.label_names("multiclass").items())
                    problems.append(
                        f"{path}: label values {undeclared} are not declared in dataset.json labels "
                        f"(declared: {names}); declare them or fix the label map"
                    )
                high = max(high, max(declared))
            if high > _MAX_LABEL:
                problems.append(f"{path}: label value {high} is above {_MAX_LABEL}; relabel the map")
            else:
                label_out = label.astype(np.uint8 if high <= 255 else np.int16, copy=False)

    shape = ref[1] if ref is not None else (label_out.shape if label_out is not None else None)
    spacing = spacing_from_affine(ref[2]) if ref is not None else None
    summary = CaseSummary(case.case_id, shape, spacing, counts, tuple(ranges))
    if problems or not channels:
        return None, None, None, summary, problems
    image = np.stack(channels, axis=0)
    return image, label_out, ref[2], summary, problems


def load_case(case: Case, info: DatasetInfo | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Load one case and check it.

    Returns ``(image, label, affine)``: image ``float32`` of shape ``C x D x H x W`` (one channel
    per image file, stored voxel order), label ``uint8`` (``int16`` when a label value exceeds 255)
    of shape ``D x H x W`` or ``None`` when the case has no label, and the 4x4 affine of the first
    channel. Raises ``ValueError`` naming the file for: an unreadable file, a 4D file where a 3D
    volume is expected (trailing length-1 axes are accepted), non-finite image values,
    non-integer or negative label values, a shape or affine (tolerance :data:`AFFINE_ATOL_MM`)
    mismatch between the channels and the label, and - when ``info`` is given - label values not
    declared in ``dataset.json``.
    """
    image, label, affine, _, problems = _load_case_impl(case, info)
    if problems or image is None:
        if not problems:
            problems = [f"{case.case_id}: case has no image file"]
        raise _problem_error(pathlib.Path(case.case_id), problems, what="Case")
    return image, label, affine


# --------------------------------------------------------------------------------------------------
# Validating a whole data set
# --------------------------------------------------------------------------------------------------
def validate_dataset(root_or_info: str | os.PathLike | DatasetInfo, *,
                     max_workers: int = 1) -> ValidationReport:
    """Load every case and collect ALL problems plus a summary, without raising for bad data.

    ``root_or_info`` is a data set folder (scanned with the same checks as :func:`read_dataset`,
    whose problems are collected instead of raised) or a :class:`DatasetInfo`. Each case is
    loaded with :func:`load_case`'s checks; ``max_workers > 1`` loads cases in that many threads
    (decompression releases the GIL; each worker holds one case in memory). The report has
    ``.ok``, ``.problems`` (each starting with a file path) and ``.summary_text()`` (cases, shapes,
    spacings from the affine, intensity range, label voxel counts).
    """
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
    if isinstance(root_or_info, DatasetInfo):
        info, problems = root_or_info, []
        root = info.root
    else:
        info, problems = _scan(root_or_info)
        root = _resolve_root(root_or_info)
    report = ValidationReport(root=root, info=info, problems=list(problems))
    if info is None:
        return report

    def check(case: Case) -> tuple[CaseSummary, list[str]]:
        _, _, _, summary, case_problems = _load_case_impl(case, info)
        return summary, case_problems

    if max_workers == 1 or len(info.cases) <= 1:
        results = [check(c) for c in info.cases]
    else:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            results = list(pool.map(check, info.cases))
    for summary, case_problems in results:
        report.cases.append(summary)
        report.problems.extend(case_problems)
    if not info.cases and not report.problems:
        report.problems.append(f"{root}: empty dataset: no complete training case")
    return report


def check_dataset(root: str | os.PathLike | DatasetInfo) -> DatasetInfo:
    """:func:`validate_dataset`, then raise one ``ValueError`` listing every problem; returns the info.

    Call this before any training so that a bad file fails in seconds, not after hours.
    """
    report = validate_dataset(root)
    if not report.ok or report.info is None:
        problems = report.problems or [f"{report.root}: empty dataset: no complete training case"]
        raise _problem_error(report.root, problems)
    return report.info


def run_check(root: str | os.PathLike, *, max_workers: int = 1,
              stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``spineloss data check DIR``: validate, print the summary, return the exit status: 0 (good)
    or 2 (problems in the data set, or no data set there: an error in what the user gave, like every
    such error of the command line).

    The summary goes to ``stdout``; every problem (each naming its file) goes to ``stderr``.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    report = validate_dataset(root, max_workers=max_workers)
    print(report.summary_text(include_problems=False), file=out)
    if report.ok:
        print(f"OK: {report.n_cases} cases passed all checks.", file=out)
        return 0
    problems = report.problems or [f"{report.root}: empty dataset: no complete training case"]
    print(f"Data check FAILED: {len(problems)} problem(s):", file=err)
    for problem in problems:
        print(f"  - {problem}", file=err)
    return 2
