"""Synthetic T2-weighted spine MRI with vertebral-body labels (a "phantom").

The phantom exists so that the whole pipeline -- reading, preprocessing, training, metrics, reports --
can run without real data, and so that the real and the synthetic data go through the same reader:
:func:`write_phantom_dataset` writes an nnU-Net v2 folder exactly like the real lumbar data set.

Conventions follow the real lumbar data (``shared/data/lumbar``): voxel axis 0 runs head -> feet
(the spine runs along it), axis 1 front -> back, axis 2 left -> right; the NIfTI affine is the same
signed axis permutation as the real data, scaled by the subject's voxel spacing.

Anatomy model
-------------
All geometry is built in *reference millimetres* (adult sizes) and then scaled so that the field of
view along axis 0 holds the region of interest (about 224 reference mm for the lumbar spine, 190 for the
cervical spine), whatever the array shape; the subject's anatomy is scaled by a further random factor of
0.9-1.1. The voxel spacing (axes 0/1: 0.9-1.3 mm; axis 2, the slice direction: 1.0-1.5 times that,
0.9-1.95 mm) goes into the affine.

* **Spinal axis.** A centreline in the sagittal plane (axes 0/1) whose tangent angle is interpolated
  between knots: lumbar lordosis concentrated at L4-S1 (about two thirds of it, Bernhardt & Bridwell
  1989, Spine 14:717), a sacral slope of 30-48 degrees and a kyphotic sacrum; cervical lordosis C2-C7
  of roughly 10-45 degrees. The curvature is carried mostly by the discs (wedged discs, near-rigid
  bodies). A small scoliotic sway along axis 2 and a global tilt vary per subject.
* **Vertebral bodies** are rounded cylinders in the "straightened" coordinates of the centreline
  (arc length, antero-posterior, left-right): kidney-shaped cross-section (flatter posterior wall),
  waisted sides, slightly concave endplates, a dark cortical rim and fatty marrow texture. Heights,
  depths and widths grow caudally; reference values follow Panjabi et al. 1992 (lumbar, Spine 17:299),
  Panjabi et al. 1991 (cervical, Spine 16:861) and Gilad & Nissan 1986 (disc heights, Spine 11:154).
* **Intervertebral discs** fill the gaps, bulge slightly, and have a dark annulus and a bright nucleus
  pulposus (with an intranuclear cleft); the nucleus of the lower lumbar discs is randomly darker
  (degeneration).
* **Spinal canal** behind the bodies: epidural fat, the CSF-filled thecal sac (ending at S2), the cord
  (ending as the conus at L1-L2 in the lumbar spine; continuing into the medulla at the skull base).
* **Posterior elements** (unlabelled) per vertebra in its own rigid frame: pedicles, laminae, superior
  and inferior articular processes, spinous process (sloping caudally: steep in the thoracic spine, near
  horizontal in the lumbar spine, long at C7/T1), transverse processes, sacral alae.
* **Context**: lumbar -- T8-T12 above L1 (usually only T11/T12 are in view), sacrum S1-S5 and coccyx
  below L5, all unlabelled, so that levels must be told apart by position as in real data; cervical --
  skull base (clivus, occipital bone, posterior fossa with cerebellum, medulla and cisterna magna),
  C1 (atlas), C2 with the dens, C3-C7 and T1-T4 below (unlabelled).
* **Soft tissue**: body outline (air outside), subcutaneous fat with the thoracolumbar fascia, paraspinal
  muscles, psoas, aorta and inferior vena cava (flow voids), bowel with fluid and gas pockets (lumbar);
  neck outline with face, chin and shoulders, prevertebral muscles, airway, posterior neck muscles
  (cervical).
* **Image formation**: T2 TSE-like tissue intensities (CSF, nucleus and fat bright; marrow intermediate;
  muscle darker; cortical bone, ligaments and air dark) with per-subject contrast jitter; a smooth
  multiplicative bias field (exponential of a low-order polynomial with a stronger posterior coil gain,
  the kind of field N3 corrects: Sled et al. 1998, IEEE TMI 17:87); a partial-volume blur (Gaussian,
  0.6 voxel); Rician noise, i.e. the magnitude of the signal plus complex Gaussian noise (Gudbjartsson &
  Patz 1995, Magn Reson Med 34:910).

Labels
------
Only vertebral bodies are labelled (no discs, no posterior elements). Lumbar: L1..L5 = 1..5
(:data:`LUMBAR_LABELS`). Cervical: C1..C7 = 1..7 (:data:`CERVICAL_LABELS`); **C1 has no vertebral body,
so label 1 is its anterior arch** (the part of the atlas ring in front of the dens), and **label 2 (C2)
includes the dens** (the odontoid process is part of the C2 body).

The phantom is plausible, not anatomically exact: no ribs, nerve roots, foramina, facet-joint fluid or
fine bone structure, and the left-right extent is a slab through the spine.

Everything random comes from one ``numpy.random.Generator(PCG64(seed))``: the same seed gives the same
volumes. Generating a 96 x 96 x 40 case takes about 0.1 s, a 224 x 224 x 77 case about 1 s (one core).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np

__all__ = [
    "CERVICAL_LABELS",
    "LUMBAR_LABELS",
    "REGIONS",
    "generate_case",
    "write_phantom_dataset",
]

LUMBAR_LABELS: dict[str, int] = {"background": 0, "L1": 1, "L2": 2, "L3": 3, "L4": 4, "L5": 5}
"""Label values of the lumbar phantom: the vertebral bodies L1..L5 (T12 and the sacrum are 0)."""

CERVICAL_LABELS: dict[str, int] = {
    "background": 0, "C1": 1, "C2": 2, "C3": 3, "C4": 4, "C5": 5, "C6": 6, "C7": 7,
}
"""Label values of the cervical phantom. C1 (atlas) has no body: label 1 is its anterior arch.
C2 includes the dens. T1 and below are 0."""

REGIONS: tuple[str, ...] = ("lumbar", "cervical")
"""Regions :func:`generate_case` can synthesise."""

# Reference field of view along axis 0 (mm of adult anatomy mapped onto the whole axis).
_FOV_REF = {"lumbar": 224.0, "cervical": 180.0}

# Per-level reference geometry (mm): name, label, body height h, body half-depth a (AP), half-width b
# (LR), height of the disc below, canal AP depth cd, canal half-width cw, spinous process length sl and
# half-height sh, spinous slope (caudal mm per posterior mm), transverse process length tl.
_LUMBAR_TABLE = (
    ("T8", 0, 20.0, 13.0, 15.5, 5.0, 14.0, 8.0, 36.0, 5.0, 1.0, 14.0),
    ("T9", 0, 21.0, 13.5, 16.0, 5.5, 14.0, 8.0, 34.0, 5.0, 0.9, 14.0),
    ("T10", 0, 22.0, 14.0, 17.0, 5.5, 14.0, 8.5, 32.0, 6.0, 0.7, 13.0),
    ("T11", 0, 23.0, 14.5, 18.5, 6.0, 15.0, 9.0, 30.0, 7.0, 0.5, 10.0),
    ("T12", 0, 24.0, 15.0, 20.0, 7.0, 16.0, 10.0, 30.0, 9.0, 0.3, 8.0),
    ("L1", 1, 25.0, 15.5, 22.5, 8.0, 16.0, 11.0, 30.0, 10.0, 0.15, 14.0),
    ("L2", 2, 26.0, 16.0, 23.5, 9.0, 15.0, 11.0, 31.0, 11.0, 0.1, 20.0),
    ("L3", 3, 27.0, 16.5, 24.5, 10.0, 14.0, 11.5, 31.0, 11.0, 0.05, 24.0),
    ("L4", 4, 27.0, 17.0, 25.5, 11.0, 14.0, 12.0, 29.0, 10.0, 0.05, 20.0),
    ("L5", 5, 26.0, 17.0, 26.5, 10.0, 15.0, 13.0, 24.0, 8.0, 0.1, 16.0),
    ("S1", 0, 27.0, 17.0, 25.5, 2.0, 13.0, 13.0, 14.0, 6.0, 0.3, 0.0),
    ("S2", 0, 22.0, 14.0, 20.0, 2.0, 10.0, 11.0, 12.0, 5.0, 0.3, 0.0),
    ("S3", 0, 18.0, 11.5, 16.0, 2.0, 8.0, 9.0, 10.0, 4.0, 0.3, 0.0),
    ("S4", 0, 14.0, 9.5, 12.0, 1.5, 6.0, 7.0, 8.0, 3.0, 0.3, 0.0),
    ("S5", 0, 12.0, 7.5, 9.0, 3.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0),
    ("Co1", 0, 9.0, 5.5, 7.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    ("Co2", 0, 7.0, 4.5, 5.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
)
_CERVICAL_TABLE = (
    ("C2", 2, 17.0, 8.0, 8.5, 4.5, 17.0, 12.5, 24.0, 7.0, 0.3, 8.0),
    ("C3", 3, 14.0, 7.6, 8.0, 5.0, 15.0, 12.5, 14.0, 4.0, 0.5, 8.0),
    ("C4", 4, 14.0, 7.8, 8.5, 5.5, 14.5, 12.5, 15.0, 4.0, 0.5, 9.0),
    ("C5", 5, 14.0, 8.0, 9.0, 5.5, 14.5, 13.0, 16.0, 4.0, 0.5, 9.0),
    ("C6", 6, 14.0, 8.3, 9.5, 6.0, 14.5, 13.0, 20.0, 4.5, 0.5, 10.0),
    ("C7", 7, 15.0, 8.6, 10.5, 6.0, 14.5, 12.5, 30.0, 5.0, 0.5, 14.0),
    ("T1", 0, 17.0, 9.0, 12.0, 5.0, 14.0, 10.0, 34.0, 5.0, 0.8, 14.0),
    ("T2", 0, 18.0, 10.0, 13.0, 5.0, 14.0, 9.0, 36.0, 5.0, 1.0, 14.0),
    ("T3", 0, 18.5, 11.0, 13.5, 5.0, 14.0, 8.5, 36.0, 5.0, 1.0, 14.0),
    ("T4", 0, 19.0, 11.5, 14.0, 5.0, 14.0, 8.0, 36.0, 5.0, 1.0, 14.0),
)
_FIELDS = ("h", "a", "b", "disc", "cd", "cw", "sl", "sh", "slope", "tl")

# C1/C2 specifics (mm): dens height above the C2 body and radius, atlanto-dental gap, anterior-arch
# height and thickness (Panjabi et al. 1991; Doherty & Heggeness 1994, Spine 19:2270).
_DENS_H, _DENS_R, _ADI, _ARCH_H, _ARCH_T = 16.0, 5.0, 2.0, 10.0, 6.5

# T2 TSE intensities on a 0-255-like scale (roughly those of the real lumbar data).
_T2 = {
    "fat": 150.0, "skin": 85.0, "fascia": 20.0, "muscle": 45.0, "viscera": 75.0, "fluid": 175.0,
    "gas": 5.0, "vessel": 15.0, "ivc": 40.0, "marrow": 95.0, "post_marrow": 80.0, "sacrum": 100.0,
    "cortex": 35.0, "nucleus": 200.0, "annulus": 65.0, "fused_disc": 40.0, "csf": 220.0, "cord": 95.0,
    "epidural": 115.0, "brain": 110.0, "airway": 3.0, "neck_soft": 70.0,
}

_DS = 0.5  # centreline sampling step (reference mm)
_MIN_SIDE = 24  # smallest array side accepted


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------

def generate_case(region: str = "lumbar", seed: int = 0,
                  shape: tuple[int, int, int] = (96, 96, 40)
                  ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One synthetic T2-weighted spine MRI volume and its vertebral-body label map.

    Args:
        region: ``"lumbar"`` (labels L1..L5 = 1..5, T12 above and the sacrum below unlabelled) or
            ``"cervical"`` (labels C1..C7 = 1..7; C1 = its anterior arch, C2 includes the dens).
        seed: any non-negative integer; the same seed (and shape) gives identical arrays.
        shape: output array shape ``(D, H, W)``: axis 0 head -> feet, 1 front -> back, 2 left -> right.
            Each side at least 24. The anatomy is scaled to the field of view along axis 0.

    Returns:
        ``(image, label, spacing)``: ``image`` float32 ``D x H x W`` (non-negative, roughly 0-255 like the
        real uint8 data; background near 0), ``label`` uint8 ``D x H x W``, ``spacing`` the voxel size in
        mm along the three axes (0.9-1.3 mm on axes 0 and 1, 1.0-1.5 times coarser on axis 2).

    Raises:
        ValueError: unknown region, a shape that is not three integers >= 24, or a negative seed.

    See the module docstring for the anatomy and image model and its references.
    """
    region, shape = _check_args(region, shape)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    return _Phantom(region, shape, rng).render()


def write_phantom_dataset(out_dir, region: str = "lumbar", cases: int = 10, seed: int = 0,
                          shape: tuple[int, int, int] = (96, 96, 40)) -> pathlib.Path:
    """Write a synthetic nnU-Net v2 data set and return ``out_dir``.

    Layout (the same as the real data, so the same reader serves both)::

        out_dir/imagesTr/<region>_NNN_0000.nii.gz   float32 image
        out_dir/labelsTr/<region>_NNN.nii.gz        uint8 label map, same affine as the image
        out_dir/dataset.json                        name, description, channel_names {"0": "MRI"},
                                                    labels (name -> int), numTraining, file_ending

    Case ``k`` (``NNN`` = ``k`` zero-padded, from 000) is generated from a seed derived from
    ``(seed, k)`` with :class:`numpy.random.SeedSequence`, so adding cases leaves the earlier ones
    unchanged. The affine is the real data's axis permutation (axis 0 -> -z, 1 -> -y, 2 -> +x in
    RAS+) scaled by the case's voxel spacing, origin 0. Files are written atomically (temporary name,
    then rename); existing files of the same names are replaced.

    Raises:
        ValueError: bad region or shape, ``cases`` < 1, or a negative seed.
    """
    import nibabel as nib

    region, shape = _check_args(region, shape)
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or int(cases) < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = pathlib.Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(int(cases) - 1)))
    for k in range(int(cases)):
        case_seed = _case_seed(int(seed), k)
        image, label, spacing = generate_case(region, case_seed, shape)
        affine = _affine(spacing)
        name = f"{region}_{k:0{width}d}"
        _save_atomic(nib.Nifti1Image(image.astype(np.float32), affine),
                     out / "imagesTr" / f"{name}_0000.nii.gz")
        _save_atomic(nib.Nifti1Image(label.astype(np.uint8), affine), out / "labelsTr" / f"{name}.nii.gz")
    labels = LUMBAR_LABELS if region == "lumbar" else CERVICAL_LABELS
    meta = {
        "name": f"spineloss phantom {region}",
        "description": (
            f"Synthetic T2-weighted {region} spine MRI from spineloss.data.phantom (seed {int(seed)}, "
            f"shape {'x'.join(map(str, shape))}). Labels are vertebral bodies"
            + (" (C1 = anterior arch of the atlas, C2 includes the dens)." if region == "cervical" else ".")
        ),
        "channel_names": {"0": "MRI"},
        "labels": dict(labels),
        "numTraining": int(cases),
        "file_ending": ".nii.gz",
    }
    tmp = out / ".dataset.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "dataset.json")
    return out


# ----------------------------------------------------------------------------------------------------
# helpers: arguments, files
# ----------------------------------------------------------------------------------------------------

def _check_args(region: str, shape: Sequence[int]) -> tuple[str, tuple[int, int, int]]:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be three integers (D, H, W), got {shape!r}") from None
    if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                 for d in dims):
        raise ValueError(f"shape must be three integers (D, H, W), got {shape!r}")
    if min(dims) < _MIN_SIDE:
        raise ValueError(f"every side of shape must be >= {_MIN_SIDE} voxels (smaller grids cannot hold "
                         f"every vertebra), got {tuple(int(d) for d in dims)}")
    return region, (int(dims[0]), int(dims[1]), int(dims[2]))


def _case_seed(seed: int, k: int) -> int:
    """Seed of case ``k`` of a data set: independent of the number of cases."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The real data's orientation (0: head->feet = -z, 1: front->back = -y, 2: +x) scaled by spacing."""
    sz, sy, sx = spacing
    return np.array([[0.0, 0.0, sx, 0.0], [0.0, -sy, 0.0, 0.0], [-sz, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _save_atomic(img, path: pathlib.Path) -> None:
    import nibabel as nib

    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------------------------------
# helpers: numerics
# ----------------------------------------------------------------------------------------------------

def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _upsample_linear(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of a coarse grid onto ``shape`` (corners aligned)."""
    out = arr
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        pos = np.linspace(0.0, m - 1.0, n)
        i0 = np.minimum(np.floor(pos).astype(np.intp), m - 2)
        f = (pos - i0).astype(np.float32)
        sh = [1] * out.ndim
        sh[axis] = n
        f = f.reshape(sh)
        out = np.take(out, i0, axis=axis) * (1.0 - f) + np.take(out, i0 + 1, axis=axis) * f
    return out


def _noise_field(rng: np.random.Generator, shape, step) -> np.ndarray:
    """Smooth zero-mean unit-variance random field; ``step`` = correlation length in voxels per axis."""
    coarse = tuple(max(2, int(np.ceil(n / max(s, 1.0))) + 1) for n, s in zip(shape, step))
    from scipy.ndimage import gaussian_filter

    grid = gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 0.7, mode="wrap")
    field = _upsample_linear(grid, shape)
    return (field - field.mean()) / (field.std() + 1e-6)


def _keep_largest_components(lab: np.ndarray) -> None:
    """In place: each label value keeps only its largest face-connected component.

    Sampling a smooth body on a coarse grid can leave a stray voxel touching the body only at an
    edge or corner; real masks are one piece per vertebra, so the phantom's are too.
    """
    from scipy import ndimage

    for value, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        sub = lab[box]
        comp, n = ndimage.label(sub == value)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            sub[(comp > 0) & (comp != int(np.argmax(sizes)))] = 0


# ----------------------------------------------------------------------------------------------------
# the phantom
# ----------------------------------------------------------------------------------------------------

class _Phantom:
    """Draws one subject's parameters (all randomness up front) and renders it."""

    def __init__(self, region: str, shape: tuple[int, int, int], rng: np.random.Generator):
        self.region, self.shape, self.rng = region, shape, rng
        D, H, W = shape
        # --- acquisition: spacing, field of view in reference mm
        s_in = rng.uniform(0.9, 1.3)
        s_lr = s_in * rng.uniform(1.0, 1.5)                # coarser left-right (slice) spacing
        self.spacing = (float(s_in), float(s_in), float(s_lr))
        self.g = rng.uniform(0.9, 1.1)                      # anatomy size relative to the FOV
        fov = _FOV_REF[region]
        self.dz = fov / D                                   # reference mm per voxel, axes 0/1
        self.dx = self.dz * s_lr / s_in                     # axis 2
        self.Z = (np.arange(D) + 0.5) * self.dz
        self.Y = (np.arange(H) + 0.5) * self.dz
        self.X = (np.arange(W) + 0.5) * self.dx
        self.fov = (D * self.dz, H * self.dz, W * self.dx)
        self._draw_levels()
        self._draw_curve()
        self._draw_appearance()

    # ------------------------------------------------------------------ anatomy parameters
    def _draw_levels(self):
        rng, g = self.rng, self.g
        table = _LUMBAR_TABLE if self.region == "lumbar" else _CERVICAL_TABLE
        n = len(table)
        self.names = [row[0] for row in table]
        self.label = np.array([row[1] for row in table], dtype=np.uint8)
        lv = {f: np.array([row[2 + i] for row in table], dtype=float) for i, f in enumerate(_FIELDS)}
        body = g * (1.0 + 0.03 * rng.standard_normal(n))   # per-level size jitter
        height = g * (1.0 + 0.03 * rng.standard_normal(n))
        for f in ("a", "b", "cd", "cw", "sl", "sh", "tl"):
            lv[f] = lv[f] * body
        lv["h"] = lv["h"] * height
        lv["disc"] = lv["disc"] * g * rng.uniform(0.8, 1.2, n)
        self.lv = lv
        start = g * _DENS_H if self.region == "cervical" else 0.0
        self.s_top = start + np.concatenate([[0.0], np.cumsum(lv["h"] + lv["disc"])[:-1]])
        self.s_bot = self.s_top + lv["h"]
        self.s_mid = self.s_top + 0.5 * lv["h"]
        self.s_end = self.s_bot[-1]
        # disc appearance: nucleus brightness (lower lumbar discs degenerate more often)
        bright = rng.uniform(0.75, 1.05, n)
        if self.region == "lumbar":
            low = [self.names.index("L4"), self.names.index("L5")]
            bright[low] = rng.uniform(0.55, 1.0, 2)
        self.nucleus = bright
        self.lv["kind_sacral"] = np.array([nm.startswith(("S", "Co")) for nm in self.names])
        # C1/C2 geometry (cervical)
        self.dens_h, self.dens_r = g * _DENS_H, g * _DENS_R * rng.uniform(0.9, 1.1)
        self.adi, self.arch_h, self.arch_t = g * _ADI, g * _ARCH_H, g * _ARCH_T * rng.uniform(0.9, 1.1)
        # dens: tip at arc length 0 (the C2 body starts at dens_h), centre 1 mm behind the body axis
        self._dens_geom = (0.0, 1.0 * g, self.dens_r)

    def _knots(self):
        """Tangent-angle knots (s, degrees) of the spinal curve; positive = heading posteriorly."""
        rng = self.rng
        ix = {nm: i for i, nm in enumerate(self.names)}
        if self.region == "lumbar":
            th_l1 = -rng.uniform(12.0, 28.0)
            th_l3 = th_l1 * rng.uniform(0.35, 0.65)
            th_l45 = rng.uniform(-4.0, 8.0)
            ss = rng.uniform(30.0, 48.0)                      # sacral slope
            knots = [
                (self.s_mid[ix["T8"]], th_l1 + rng.uniform(8.0, 18.0)),
                (self.s_mid[ix["T12"]], th_l1 + rng.uniform(0.0, 5.0)),
                (self.s_mid[ix["L1"]], th_l1),
                (self.s_mid[ix["L3"]], th_l3),
                (self.s_bot[ix["L4"]] + 0.5 * self.lv["disc"][ix["L4"]], th_l45),
                (self.s_top[ix["S1"]], ss),
                (self.s_mid[ix["S3"]], ss - rng.uniform(5.0, 15.0)),
                (self.s_bot[ix["Co2"]], ss - rng.uniform(40.0, 70.0)),
            ]
            tilt = rng.uniform(-6.0, 6.0)
        else:
            th_c2 = -rng.uniform(8.0, 22.0)
            th_c7 = rng.uniform(8.0, 22.0)
            knots = [
                (0.0, th_c2 - rng.uniform(0.0, 8.0)),
                (self.s_mid[ix["C2"]], th_c2),
                (self.s_bot[ix["C4"]] + 0.5 * self.lv["disc"][ix["C4"]], rng.uniform(-5.0, 5.0)),
                (self.s_mid[ix["C7"]], th_c7),
                (self.s_mid[ix["T2"]], th_c7 + rng.uniform(0.0, 5.0)),
                (self.s_bot[ix["T4"]], th_c7 - rng.uniform(0.0, 10.0)),
            ]
            tilt = rng.uniform(-8.0, 8.0)
        s_k = np.array([k[0] for k in knots])
        th_k = np.deg2rad(np.array([k[1] for k in knots]) + tilt)
        return s_k, th_k

    def _draw_curve(self):
        rng = self.rng
        s_k, th_k = self._knots()
        margin = max(self.fov) + 60.0
        s = np.arange(-margin, self.s_end + margin, _DS)
        # curvature lives mostly in the discs: "angle time" runs 3x slower inside bodies
        seg = np.clip(np.searchsorted(self.s_top, s, side="right") - 1, 0, len(self.s_top) - 1)
        in_body = (s >= self.s_top[seg]) & (s <= self.s_bot[seg])
        tau = np.cumsum(np.where(in_body, 0.35, 1.0)) * _DS
        th = np.interp(tau, np.interp(s_k, s, tau), th_k)
        from scipy.ndimage import gaussian_filter1d
        th = gaussian_filter1d(th, 2.0 / _DS, mode="nearest")
        z = np.concatenate([[0.0], np.cumsum(0.5 * (np.cos(th[1:]) + np.cos(th[:-1])) * _DS)])
        y = np.concatenate([[0.0], np.cumsum(0.5 * (np.sin(th[1:]) + np.sin(th[:-1])) * _DS)])
        # scoliotic sway and roll along axis 2
        amp, phase = rng.uniform(0.0, 4.0), rng.uniform(0.0, 2 * np.pi)
        roll = np.tan(np.deg2rad(rng.uniform(-2.0, 2.0)))
        x = amp * np.sin(np.pi * s / max(self.s_end, 1.0) + phase) + roll * (s - 0.5 * self.s_end)
        x = x - np.interp(0.5 * self.s_end, s, x) + self.fov[2] / 2 + rng.normal(0.0, 2.0)
        # craniocaudal placement: keep labelled bodies (plus context) in view, otherwise random
        lab = np.nonzero(self.label)[0]
        zc = []
        for i in lab:
            for ss_ in (self.s_top[i], self.s_bot[i]):
                zi, thi = np.interp(ss_, s, z), np.interp(ss_, s, th)
                for v in (-self.lv["a"][i], self.lv["a"][i]):
                    zc.append(zi - v * np.sin(thi))
        if self.region == "cervical":
            zc.append(np.interp(-0.5 * self.dens_h, s, z))   # C1 anterior arch / dens tip
            top_margin, bottom_margin = 15.0 + self.dz, 8.0 + self.lv["disc"][lab[-1]]
        else:
            top_margin, bottom_margin = 6.0, 8.0         # at least the T12/L1 and L5/S1 discs
        lo = top_margin - min(zc)
        hi = self.fov[0] - bottom_margin - max(zc)
        z0 = rng.uniform(lo, hi) if hi > lo else 0.5 * (lo + hi)
        z = z + z0
        # antero-posterior placement of the mean body centre of the labelled levels
        y_mean = np.mean(np.interp(self.s_mid[lab], s, y))
        if self.region == "lumbar":
            # back skin: the centreline heavily smoothed (the skin does not follow the lordosis),
            # plus the subject's back depth, closer to the sacrum
            self.back = rng.uniform(75.0, 100.0) * self.g
            z_s1 = np.interp(self.s_top[self.names.index("S1")], s, z)
            skin = gaussian_filter1d(np.interp(self.Z, z, y), 60.0 / self.dz, mode="nearest")
            skin = skin + self.back - 25.0 * self.g * _smoothstep((self.Z - z_s1) / 40.0)
            target = self.fov[1] * rng.uniform(0.42, 0.56) - y_mean
            target = min(target, self.fov[1] - rng.uniform(4.0, 20.0) - skin.max())
            target = max(target, 0.3 * self.fov[1] - y_mean)
            self.skin_y = skin + target
            y = y + target
        else:
            y = y + (self.fov[1] * rng.uniform(0.45, 0.57) - y_mean)
        self.cs, self.cz, self.cy, self.cx, self.cth = s, z, y, x, th

    def _draw_appearance(self):
        rng = self.rng
        self.gain = rng.uniform(0.8, 1.2)
        self.tissue = {k: v * float(np.exp(rng.normal(0.0, 0.08))) for k, v in _T2.items()}
        self.tissue["fat"] *= rng.uniform(0.85, 1.15)
        self.tissue["csf"] *= rng.uniform(0.85, 1.1)
        self.fat_sc = rng.uniform(8.0, 30.0) * self.g if self.region == "lumbar" else rng.uniform(4.0, 10.0)
        self.groove = rng.uniform(3.0, 10.0)
        self.front = rng.uniform(-40.0, 20.0)                 # lumbar anterior skin (reference mm, Y)
        self.front_fat = rng.uniform(10.0, 30.0)
        self.noise_sigma = rng.uniform(2.5, 6.0)
        self.bias = rng.normal(0.0, 0.12, 8)
        self.coil = rng.uniform(0.1, 0.45)
        self.outline_scale = rng.uniform(0.9, 1.1, 3)
        self.conus = rng.uniform(-0.5, 1.0)                   # conus tip: L1 body (<0) .. L2 (1)
        self.clivus_angle = rng.uniform(22.0, 38.0)           # clivus vs C2 axis (degrees)
        fine = 4.0 / np.array([self.dz, self.dz, self.dx])
        coarse = 12.0 / np.array([self.dz, self.dz, self.dx])
        self.tex_fine = _noise_field(rng, self.shape, fine)
        self.tex_coarse = _noise_field(rng, self.shape, coarse)
        self.tex_coarse2 = _noise_field(rng, self.shape, coarse * 0.7)
        self.noise = rng.standard_normal((2,) + self.shape, dtype=np.float32)

    # ------------------------------------------------------------------ geometry helpers
    def _frame(self, s):
        """Centreline point (z, y, x) and angle at arc length ``s`` (scalars or arrays)."""
        return (np.interp(s, self.cs, self.cz), np.interp(s, self.cs, self.cy),
                np.interp(s, self.cs, self.cx), np.interp(s, self.cs, self.cth))

    def _straighten(self):
        """Arc length s and signed AP offset v (posterior +) of every sagittal pixel (D x H)."""
        from scipy.spatial import cKDTree
        zz, yy = np.meshgrid(self.Z, self.Y, indexing="ij")
        tree = cKDTree(np.stack([self.cz, self.cy], axis=1))
        _, idx = tree.query(np.stack([zz.ravel(), yy.ravel()], axis=1))
        idx = idx.reshape(zz.shape)
        dz, dy = zz - self.cz[idx], yy - self.cy[idx]
        c, s_ = np.cos(self.cth[idx]), np.sin(self.cth[idx])
        s = self.cs[idx] + dz * c + dy * s_
        v = -dz * s_ + dy * c
        return s, v

    # ------------------------------------------------------------------ rendering
    def render(self):
        """Paint tissues (back to front), then bias field, partial-volume blur and Rician noise."""
        img = np.zeros(self.shape, dtype=np.float32)
        lab = np.zeros(self.shape, dtype=np.uint8)
        s2, v2 = self._straighten()
        self._soft_tissue(img)
        self._posterior_elements(img, lab)
        self._spine_column(img, lab, s2, v2)
        if self.region == "cervical":
            self._atlas(img, lab)
            self._skull_bones(img)
        _keep_largest_components(lab)
        # image formation: bias field, partial volume, Rician noise
        from scipy.ndimage import gaussian_filter
        img *= self._bias_field() * self.gain
        img = gaussian_filter(img, 0.6, mode="nearest", truncate=3.0)
        n = self.noise * np.float32(self.noise_sigma)
        img = np.sqrt((img + n[0]) ** 2 + n[1] ** 2)
        return img.astype(np.float32, copy=False), lab, self.spacing

    def _bias_field(self):
        D, H, W = self.shape
        zn = np.linspace(-1.0, 1.0, D)[:, None]
        yn = np.linspace(-1.0, 1.0, H)[None, :]
        xn = np.linspace(-1.0, 1.0, W)
        c = self.bias
        p2 = c[0] * zn + c[1] * yn + c[2] * zn * zn + c[3] * yn * yn + c[4] * zn * yn + self.coil * yn
        b = np.exp((p2[:, :, None] + c[5] * xn + c[6] * xn * xn).astype(np.float32))
        return b / np.float32(np.mean(b))

    # ------------------------------------------------------------------ soft tissue (global frame)
    def _global_coords(self):
        """AP offset from a heavily smoothed centreline (D x H) and LR offset from its middle (W)."""
        from scipy.ndimage import gaussian_filter1d
        ys = np.interp(self.Z, self.cz, self.cy)
        ys = gaussian_filter1d(ys, 25.0 / self.dz, mode="nearest")
        xs = np.interp(self.Z, self.cz, self.cx)
        vg = self.Y[None, :] - ys[:, None]
        wg = self.X[None, :] - xs[:, None]                    # D x W
        return vg, wg

    def _z_of(self, s):
        return np.interp(s, self.cs, self.cz)

    def _soft_tissue(self, img):
        T = self.tissue
        vg, wg = self._global_coords()
        V = vg[:, :, None]
        Wg = wg[:, None, :]
        lv = self.lv
        zS = self.Z
        if self.region == "lumbar":
            i_s1 = self.names.index("S1")
            z_s1 = self._z_of(self.s_top[i_s1])
            ys = self.Y[None, :, None]
            back = self.skin_y[:, None, None] - self.groove * np.exp(-(Wg / 22.0) ** 2) - Wg ** 2 / 500.0
            inside = (ys < back) & (ys > self.front)
            img[inside] = T["fat"]
            fat_in = back - self.fat_sc
            fascia = inside & (ys > fat_in - 1.5) & (ys <= fat_in)
            deep = inside & (ys <= fat_in - 1.5) & (ys > self.front + self.front_fat)
            # abdominal wall muscle band behind the anterior fat
            wall = deep & (ys < self.front + self.front_fat + 10.0)
            a_m, b_m = np.mean(lv["a"][5:10]), np.mean(lv["b"][5:10])
            musc_front = (0.9 * a_m + 8.0) - 1.3 * np.clip(np.abs(Wg) - (b_m + 4.0), 0.0, None)
            muscle = deep & (V > musc_front)
            # psoas: grows from T12/L1 to L4/L5, antero-lateral to the bodies
            i_l1, i_l4 = self.names.index("L1"), self.names.index("L4")
            ramp = _smoothstep((zS - self._z_of(self.s_top[i_l1])) /
                               max(self._z_of(self.s_bot[i_l4]) - self._z_of(self.s_top[i_l1]), 1.0))
            ramp = ramp * (1.0 - _smoothstep((zS - z_s1 - 10.0) / 30.0))
            rv = (4.0 + 12.0 * ramp)[:, None, None] * self.g
            rw = (4.0 + 10.0 * ramp)[:, None, None] * self.g
            psoas = ((V + 2.0) / rv) ** 2 + ((np.abs(Wg) - (b_m + 12.0 * self.g)) / rw) ** 2 < 1.0
            visc = deep & ~muscle & ~psoas
            t1, t2 = self.tex_coarse, self.tex_coarse2
            vis_val = T["viscera"] * (1.0 + 0.18 * t1 + 0.12 * t2 + 0.08 * self.tex_fine)
            vis_val = np.where(t1 > 1.9, T["fluid"], vis_val)
            vis_val = np.where(t2 < -2.1, T["gas"], vis_val)
            img[visc] = vis_val[visc]
            mus_val = T["muscle"] * (1.0 + 0.12 * self.tex_fine)
            mus_val = np.where(self.tex_coarse2 > 1.5, T["fat"] * 0.8, mus_val)   # intermuscular fat
            m = (muscle | psoas | wall) & deep
            img[m] = mus_val[m]
            img[fascia] = T["fascia"]
            skin = inside & (ys > back - 1.5)
            img[skin] = T["skin"]
            # great vessels in front of the spine: aorta (left) bifurcating at L4, IVC (right)
            z_bif = self._z_of(self.s_mid[i_l4])
            spread = 0.6 * np.clip(zS - z_bif, 0.0, None)[:, None, None]
            vc = -(a_m + 13.0 * self.g)
            r_ao = 10.0 * self.g * np.where(zS > z_bif, 0.65, 1.0)[:, None, None]
            w_ao = np.abs(Wg + 14.0 * self.g * (zS <= z_bif)[:, None, None]) - spread
            ao = (V - vc) ** 2 + w_ao ** 2 < r_ao ** 2
            ivc = ((V - vc - 2.0) / (8.0 * self.g)) ** 2 + \
                ((Wg - 17.0 * self.g - spread) / (12.0 * self.g)) ** 2 < 1.0
            img[ao & deep] = T["vessel"]
            img[ivc & deep & ~ao] = T["ivc"]
        else:
            self._neck_soft_tissue(img, V, Wg)

    def _neck_soft_tissue(self, img, V, Wg):
        T, g, lv = self.tissue, self.g, self.lv
        ix = {nm: i for i, nm in enumerate(self.names)}
        z_tip = float(self._z_of(0.0))                       # dens tip
        zs = self.Z
        z = lambda s: float(self._z_of(s))  # noqa: E731
        sc = self.outline_scale
        kz = [z_tip - 40.0, z(self.s_mid[ix["C2"]]), z(self.s_bot[ix["C3"]]), z(self.s_mid[ix["C5"]]),
              z(self.s_mid[ix["T1"]]), z(self.s_mid[ix["T3"]])]
        back = np.interp(zs, kz, [95.0, 72.0, 68.0, 66.0, 85.0, 100.0]) * g * sc[0]
        front = np.interp(zs, kz, [120.0, 105.0, 55.0, 45.0, 55.0, 90.0]) * g * sc[1]
        half_w = np.interp(zs, kz, [75.0, 72.0, 58.0, 55.0, 95.0, 160.0]) * g * sc[2]
        back, front, half_w = (q[:, None, None] for q in (back, front, half_w))
        mid, half_ap = 0.5 * (back - front), 0.5 * (back + front)
        rho = ((V - mid) / half_ap) ** 2 + (Wg / half_w) ** 2
        fat = self.fat_sc * g
        rho_in = ((V - mid) / (half_ap - fat)) ** 2 + (Wg / (half_w - fat)) ** 2
        img[rho < 1.0] = T["fat"]
        deep = rho_in < 1.0
        mus_val = T["muscle"] * (1.0 + 0.12 * self.tex_fine)
        mus_val = np.where(self.tex_coarse2 > 1.9, T["fat"] * 0.8, mus_val)        # intermuscular fat
        img[deep] = mus_val[deep]
        # anterior neck: prevertebral muscle, then airway and the soft tissue around it
        a_s = np.interp(zs, self._z_of(self.s_mid), lv["a"])[:, None, None]
        prev = np.interp(zs, [z(self.s_mid[ix["C2"]]), z(self.s_mid[ix["C4"]]), z(self.s_mid[ix["C6"]]),
                              z(self.s_mid[ix["T1"]])], [4.0, 5.0, 12.0, 16.0])[:, None, None] * g
        soft = deep & (V < -(a_s + prev)) & (np.abs(Wg) < 30.0 * g)
        img[soft] = T["neck_soft"] * (1.0 + 0.15 * self.tex_fine[soft])
        air_ap = 7.0 * g
        air_c = -(a_s + prev + air_ap + 1.0)
        Zg = self.Z[:, None, None]
        airway = (((V - air_c) / air_ap) ** 2 + (Wg / (10.0 * g)) ** 2 < 1.0) & (Zg > z_tip - 12.0 * g)
        # nasopharynx: at the level of C1 and the clivus the airway turns anteriorly
        naso = ((Zg - (z_tip - 12.0 * g)) / (12.0 * g)) ** 2 + ((V - air_c + 6.0 * g) / (11.0 * g)) ** 2 + \
            (Wg / (13.0 * g)) ** 2 < 1.0
        img[(airway | naso) & deep] = T["airway"]

    # ------------------------------------------------------------------ the column (curved frame)
    def _spine_column(self, img, lab, s2, v2):
        T, lv = self.tissue, self.lv
        n = len(self.s_top)
        reach = float(np.max(lv["a"]) + np.max(lv["cd"]) + 12.0)
        s_lo = -10.0 * self.g if self.region == "cervical" else self.s_top[0] - 10.0
        band = (np.abs(v2) < reach) & (s2 > s_lo) & (s2 < self.s_end + 5.0)
        bi, bj = np.nonzero(band)
        if bi.size == 0:
            return
        s = s2[bi, bj]
        v = v2[bi, bj]
        xc = np.interp(s, self.cs, self.cx)
        w = self.X[None, :] - xc[:, None]                   # n x W
        sub = img[bi, bj]
        sl_ = np.zeros(sub.shape, dtype=np.uint8)
        tex = self.tex_fine[bi, bj]

        # ---- canal: epidural fat, thecal sac (CSF), cord
        post = lv["a"] * 0.92
        a_post = np.interp(s, self.s_mid, post)
        cd = np.interp(s, self.s_mid, np.maximum(lv["cd"], 1e-3))
        cw = np.interp(s, self.s_mid, np.maximum(lv["cw"], 1e-3))
        v_cc = a_post + 1.5 + 0.5 * cd
        if self.region == "cervical":
            # C1 level: the canal widens around the dens and cord; above the foramen magnum it opens up
            wide = 1.0 + 0.35 * _smoothstep((self.s_top[0] + 4.0 - s) / 10.0)
            cd, cw = cd * wide, cw * wide
            v_cc = a_post + 1.5 + 0.5 * cd
        canal_r = ((v - v_cc) / (0.5 * cd))[:, None] ** 2 + (w / cw[:, None]) ** 2
        canal = canal_r < 1.0
        if self.region == "lumbar":
            canal &= (s < self.s_bot[self.names.index("S5")])[:, None]
        sub[canal] = T["epidural"]
        sac_end = self.s_mid[self.names.index("S2")] if self.region == "lumbar" else np.inf
        sac_taper = 1.0 - _smoothstep((s - sac_end + 15.0) / 15.0)
        sac_v = np.maximum(0.38 * cd * sac_taper, 1e-3)
        sac_w = np.maximum(0.72 * cw * sac_taper, 1e-3)
        sac_c = v_cc - 0.08 * cd
        sac = (((((v - sac_c) / sac_v)[:, None] ** 2 + (w / sac_w[:, None]) ** 2) < 1.0)
               & (sac_taper > 0.05)[:, None])
        sub[sac] = T["csf"]
        if self.region == "lumbar":
            i1 = self.names.index("L1")
            s_tip = self.s_mid[i1] + self.conus * (self.s_mid[i1 + 1] - self.s_mid[i1])
            r_scale = np.sqrt(np.clip((s_tip - s) / 18.0, 0.0, 1.0))
            cord_v, cord_w = 3.8 * self.g * r_scale, 4.8 * self.g * r_scale
        else:
            enlarg = 1.0 + 0.15 * np.exp(-((s - self.s_mid[3]) / 20.0) ** 2)   # cervical enlargement
            medulla = 1.0 + 0.45 * _smoothstep((-s - 5.0) / 25.0)
            cord_v, cord_w = 3.6 * self.g * medulla * np.ones_like(s), 5.8 * self.g * enlarg * medulla
        cord_c = v_cc - 0.05 * cd
        cord = ((((v - cord_c) / np.maximum(cord_v, 1e-3))[:, None] ** 2 +
                 (w / np.maximum(cord_w, 1e-3)[:, None]) ** 2) < 1.0) & (cord_v > 0.3)[:, None]
        sub[cord] = T["cord"]

        # ---- bodies and discs
        k = np.clip(np.searchsorted(self.s_top, s, side="right") - 1, 0, n - 1)
        sl = s - self.s_top[k]
        h, a, b = lv["h"][k], lv["a"][k], lv["b"][k]
        hh = 0.5 * h
        t = (sl - hh) / hh                                   # -1 at top, +1 at bottom endplate
        vr = np.where(v < 0.0, (v / a) ** 2, (np.abs(v) / (0.92 * a)) ** 4)   # flatter posterior wall
        wr = (w / b[:, None]) ** 2
        r2 = vr[:, None] + wr                                # n x W, ~ normalised radius squared
        sacral = lv["kind_sacral"][k]
        waist = np.where(sacral, 0.0, 0.06) * (1.0 - np.clip(t, -1, 1) ** 2)
        rw2 = (1.0 - waist) ** 2
        ce = 2.4 / h                                          # endplate concavity ~1.2 mm
        t8 = (t ** 2) ** 4
        in_t = np.abs(t) <= 1.0
        body = (in_t[:, None] & (t8[:, None] + (r2 / rw2[:, None]) ** 4 <= 1.0)
                & (r2 >= (1.0 - (1.0 - np.abs(t)) / ce)[:, None]))
        # inner marrow (for a dark cortical rim of ~1.3 mm)
        rim = 1.1
        ti = t * hh / np.maximum(hh - rim, 1.0)
        sr = (np.minimum(a, b) / np.maximum(np.minimum(a, b) - rim, 1.0)) ** 2
        inner = body & (((ti ** 2) ** 4)[:, None] + (r2 * sr[:, None] / rw2[:, None]) ** 4 <= 1.0)
        # discs: the disc below body k spans [s_bot, s_top(k+1)]; also fills the endplate concavities
        j = np.where(sl < hh, k - 1, k)                      # disc index nearest to this position
        valid = (j >= 0) & (j < n - 1)
        jc = np.clip(j, 0, n - 2)
        dh = lv["disc"][jc]
        s_dm = self.s_bot[jc] + 0.5 * dh
        td = (s - s_dm) / (0.5 * dh + 1.5)
        ad = 0.5 * (lv["a"][jc] + lv["a"][jc + 1])
        bd = 0.5 * (lv["b"][jc] + lv["b"][jc + 1])
        vd = np.where(v < 0.0, (v / ad) ** 2, (np.abs(v) / (0.92 * ad)) ** 4)
        rd2 = vd[:, None] + (w / bd[:, None]) ** 2
        bulge = (1.0 + 0.05 * (1.0 - np.clip(td, -1, 1) ** 2)) ** 2
        disc = (valid & (np.abs(td) <= 1.0) & (dh > 0.5))[:, None] & (rd2 <= bulge[:, None]) & ~body
        fused = lv["kind_sacral"][jc]                        # sacral/coccygeal remnants: dark, thin
        nuc = (np.clip((0.62 - np.sqrt(rd2)) / 0.15, 0.0, 1.0)
               * np.clip((0.85 - np.abs(td)) / 0.25, 0.0, 1.0)[:, None])
        cleft = 1.0 - 0.15 * np.exp(-((td * (0.5 * dh)) / 0.6) ** 2)
        nb = T["nucleus"] * self.nucleus[jc] * cleft
        disc_val = T["annulus"] + (nb - T["annulus"])[:, None] * nuc
        disc_val = np.where(fused[:, None], T["fused_disc"], disc_val)
        sub[disc] = disc_val[disc]
        marrow = np.where(sacral, T["sacrum"], T["marrow"])[:, None] * (1.0 + 0.08 * tex)
        body_val = np.where(inner, marrow, T["cortex"])
        sub[body] = body_val[body]
        labk = self.label[k][:, None]
        sl_[body] = np.broadcast_to(labk, body.shape)[body]

        # ---- dens (C2) in the curved frame
        if self.region == "cervical":
            s_tip, v_d, rd = self._dens_geom
            u = (s - s_tip) / (self.dens_h + 3.0)            # 0 at the tip, 1 a little into the body
            # rounded tip: the radius grows like sqrt over the top quarter of the dens
            prof = np.where(u < 0.25, 0.1 + 0.9 * np.sqrt(np.clip(u / 0.25, 0.0, 1.0)), 1.0)
            prof = np.where((u >= 0.0) & (u <= 1.0), prof, 0.0)
            dens_r2 = ((v - v_d) / (rd * np.maximum(prof, 1e-3)))[:, None] ** 2 + \
                (w / (rd * np.maximum(prof, 1e-3))[:, None]) ** 2
            dens = (prof > 0.05)[:, None] & (dens_r2 <= 1.0)
            inner_r = np.maximum(rd * prof - 1.2, 0.0) / (rd * np.maximum(prof, 1e-3))
            dens_in = dens & (dens_r2 <= inner_r[:, None] ** 2)
            dval = np.where(dens_in, T["marrow"] * (1.0 + 0.08 * tex), T["cortex"])
            sub[dens] = dval[dens]
            sl_[dens] = 2
        img[bi, bj] = sub
        lab[bi, bj] = sl_

    # ------------------------------------------------------------------ posterior elements (rigid)
    def _local(self, s0, box_a, box_b):
        """Rigid local frame at arc length s0 restricted to a bounding box; returns slices and coords."""
        z0, y0, x0, th = self._frame(s0)
        c, sn = np.cos(th), np.sin(th)
        corners_a = np.array([box_a[0], box_a[0], box_a[1], box_a[1]])
        corners_b = np.array([box_b[0], box_b[1], box_b[0], box_b[1]])
        zc = z0 + corners_a * c - corners_b * sn
        yc = y0 + corners_a * sn + corners_b * c
        D, H, _ = self.shape
        i0 = int(np.clip(np.floor(zc.min() / self.dz - 0.5), 0, D))
        i1 = int(np.clip(np.ceil(zc.max() / self.dz + 0.5) + 1, 0, D))
        j0 = int(np.clip(np.floor(yc.min() / self.dz - 0.5), 0, H))
        j1 = int(np.clip(np.ceil(yc.max() / self.dz + 0.5) + 1, 0, H))
        if i1 <= i0 or j1 <= j0:
            return None
        dzz = self.Z[i0:i1, None] - z0
        dyy = self.Y[None, j0:j1] - y0
        la = dzz * c + dyy * sn
        lb = -dzz * sn + dyy * c
        lc = self.X - x0
        return (slice(i0, i1), slice(j0, j1)), la, lb, lc

    def _posterior_elements(self, img, lab):
        """Pedicles, laminae, articular, spinous and transverse processes, sacral alae (unlabelled).

        Each vertebra's elements are superellipsoids in the vertebra's rigid frame (origin at the body
        centre; a = caudal, b = posterior, c = left-right), evaluated only in its bounding box. The
        midline gaps between spinous processes (interspinous ligament and fat) are painted first.
        """
        T, lv, g = self.tissue, self.lv, self.g
        n = len(self.s_top)
        levels = []
        for i in range(n):
            if lv["cd"][i] <= 0.0:
                continue
            hh, a, d_below = 0.5 * lv["h"][i], lv["a"][i], lv["disc"][i]
            cd, cw, sl, sh, slope = lv["cd"][i], lv["cw"][i], lv["sl"][i], lv["sh"][i], lv["slope"][i]
            ap = 0.92 * a + 1.5
            lt = 3.5 * g                                      # lamina half-thickness
            b_lam = ap + cd + lt
            ext_b = b_lam + lt + sl + 6.0
            ext_a = hh + d_below + sl * slope + sh + 6.0
            loc = self._local(self.s_mid[i], (-hh - 12.0, ext_a), (-a - 4.0, ext_b))
            if loc is not None:
                levels.append((i, loc, hh, a, d_below, cd, cw, sl, sh, slope, ap, lt, b_lam))
        # pass 1: interspinous ligament / fat in the midline between the spinous processes
        for i, (sl2, la, lb, lc), hh, a, d_below, cd, cw, sl, sh, slope, ap, lt, b_lam in levels:
            if sl <= 0.0:
                continue
            b0 = b_lam + lt
            a_sh = la - slope * np.clip(lb - b0, 0.0, None)
            f2 = ((a_sh - (0.35 * hh + 0.3 * d_below)) / (hh + d_below + 2.0)) ** 4 + \
                ((lb - (b0 + 0.45 * sl)) / (0.5 * sl + 1.0)) ** 4
            m = (f2[:, :, None] + (lc / (3.0 * g)) ** 4) <= 1.0
            val = T["fat"] * (0.55 + 0.2 * self.tex_fine[sl2])
            view = img[sl2]
            view[m] = val[m]
        # pass 2: bone
        for i, (sl2, la, lb, lc), hh, a, d_below, cd, cw, sl, sh, slope, ap, lt, b_lam in levels:
            b, tl = lv["b"][i], lv["tl"][i]
            sacral = bool(lv["kind_sacral"][i])
            pw = max(0.45 * cw, 3.0 * g)                      # pedicle half-width
            q = np.full(la.shape + (lc.size,), np.inf, dtype=np.float32)

            def add(ca, cb, cc, ra, rb, rc, p=2, mirror=True, aa=None):
                A = la if aa is None else aa
                f2 = np.abs((A - ca) / ra) ** p + np.abs((lb - cb) / rb) ** p
                cx = (np.abs(lc) - cc) if mirror else (lc - cc)
                f1 = np.abs(cx / rc) ** p
                np.minimum(q, (f2[:, :, None] + f1[None, None, :]).astype(np.float32), out=q)

            # pedicles
            add(-0.25 * hh, ap + 0.5 * cd, cw + pw, 0.3 * lv["h"][i] + 1.0, 0.5 * cd + 3.0, pw)
            # laminae: a roof over the canal reaching down over the disc level
            add(0.35 * hh + 0.3 * d_below, b_lam, 0.0, 0.75 * hh + 0.3 * d_below, lt, cw + pw + 1.0,
                p=4, mirror=False)
            # articular processes: superior (up to the disc above), inferior (down to the disc below)
            add(-hh - 1.0, ap + cd + 1.0, cw + pw, 0.45 * hh + 2.0, 5.5 * g, 0.8 * pw + 2.0)
            add(hh + 0.5 * d_below + 1.0, b_lam + 1.0, cw + 0.5 * pw, 0.45 * hh + 2.0, 5.0 * g,
                0.8 * pw + 2.0)
            if sl > 0.0:
                # spinous process, sheared so that it slopes caudally; taller at its tip
                b0 = b_lam + lt
                a_sh = la - slope * np.clip(lb - b0, 0.0, None)
                add(0.35 * hh + 0.3 * d_below, b0 + 0.5 * sl - 1.0, 0.0, 0.85 * sh, 0.5 * sl + 2.0,
                    3.0 * g, p=3, mirror=False, aa=a_sh)
            if tl > 0.0:
                add(-0.15 * hh, ap + 0.45 * cd, cw + 2 * pw + 0.5 * tl, 4.5 * g, 4.0 * g, 0.5 * tl + 2.0)
            if sacral and lv["h"][i] > 15.0:
                # sacral ala / lateral mass
                add(0.0, 0.2 * a, b + 12.0 * g, 0.9 * hh + 1.0, 0.9 * a, 16.0 * g * (b / 24.0))
            bone = q <= 1.0
            val = T["cortex"] + (T["post_marrow"] - T["cortex"]) * np.clip((1.0 - q) / 0.45, 0.0, 1.0)
            if sacral:
                val = val * (T["sacrum"] / T["post_marrow"])
            view = img[sl2]
            view[bone] = val[bone]

    # ------------------------------------------------------------------ cervical specials
    def _atlas(self, img, lab):
        """C1: anterior arch (labelled 1), lateral masses, posterior arch, transverse processes."""
        T, g = self.tissue, self.g
        s_tip, v_d, rd = self._dens_geom
        s_c1 = s_tip + 0.45 * self.dens_h
        r_in = rd + self.adi
        r_out = r_in + self.arch_t
        loc = self._local(s_c1, (-18.0 * g, 18.0 * g), (-r_out - 6.0, v_d + 50.0 * g))
        if loc is None:
            return
        sl2, la, lb, lc = loc
        A = la[:, :, None]
        B = lb[:, :, None] - v_d
        C = lc[None, None, :]
        rr = np.sqrt(B ** 2 + C ** 2)
        ha = 0.5 * self.arch_h
        # anterior arch: a crescent in front of the dens, spanning +-65 degrees around the midline
        ang = np.arctan2(np.abs(C), -B)
        arch_prof = (A / ha) ** 2 + ((rr - 0.5 * (r_in + r_out)) / (0.5 * self.arch_t)) ** 2
        arch = (arch_prof <= 1.0) & (ang <= np.deg2rad(65.0)) & (B < 0)
        # lateral masses, posterior arch (a ring around the canal) and transverse processes
        lm = ((A / (1.1 * ha)) ** 2 + ((B - 3.0 * g) / (9.0 * g)) ** 2
              + ((np.abs(C) - (r_out + 4.0 * g)) / (7.0 * g)) ** 2)
        pr_c, pr_a, pr_w = 17.0 * g, 18.0 * g, 22.0 * g
        pring = (((B - pr_c) / pr_a) ** 2 + (C / pr_w) ** 2)
        parch = (pring <= 1.0) & (pring >= ((pr_a - 5.0 * g) / pr_a) ** 2) & (B > pr_c * 0.6) & \
            ((A / (0.7 * ha)) ** 2 <= 1.0)
        tp = ((A / (0.6 * ha)) ** 2 + ((B - 2.0 * g) / (5.0 * g)) ** 2
              + ((np.abs(C) - (r_out + 16.0 * g)) / (10.0 * g)) ** 2)
        other = ((lm <= 1.0) | parch | (tp <= 1.0)) & ~arch
        view = img[sl2]
        lview = lab[sl2]
        view[other] = T["post_marrow"]
        view[arch] = np.where(arch_prof[arch] < 0.45, T["post_marrow"], T["cortex"])
        lview[arch] = 1

    def _skull_bones(self, img):
        """Skull base: clivus, occipital bone around the posterior fossa (cerebellum, medulla/pons,
        cisterna magna). Built in the rigid frame at the foramen magnum (a = caudal, b = posterior)."""
        T, g, lv = self.tissue, self.g, self.lv
        s_tip, v_d, _ = self._dens_geom
        fm = s_tip - 6.0 * g                                 # level of the basion
        loc = self._local(fm, (-140.0 * g, 6.0 * g), (-60.0 * g, 110.0 * g))
        if loc is None:
            return
        sl2, la, lb, lc = loc
        A = la[:, :, None]
        B = lb[:, :, None]
        C = lc[None, None, :]
        view = img[sl2]
        b_bas = v_d - 2.0 * g                                # basion: anterior rim of the foramen magnum
        v_cc = 0.92 * lv["a"][0] + 1.5 + 0.5 * 1.35 * lv["cd"][0]   # canal centre at C1/C2 (see column)
        # clivus: bony bar rising anteriorly from the basion, ~30 degrees off the C2 axis
        phi = np.deg2rad(self.clivus_angle)
        u = -A * np.cos(phi) - (B - b_bas) * np.sin(phi)     # along the clivus, upwards
        n_ = (B - b_bas) * np.cos(phi) - A * np.sin(phi)     # across it, posterior +
        # posterior fossa: an ellipsoid whose floor is the foramen magnum
        ca, cb = -48.0 * g, 26.0 * g
        ra, rb, rc = 50.0 * g, 62.0 * g, 62.0 * g
        e = ((A - ca) / ra) ** 2 + ((B - cb) / rb) ** 2 + (C / rc) ** 2
        t_b = 7.0 * g
        e_out = ((A - ca) / (ra + t_b)) ** 2 + ((B - cb) / (rb + t_b)) ** 2 + (C / (rc + t_b)) ** 2
        behind = n_ > 0
        cavity = (e < 1.0) & behind
        brain = T["brain"] * (1.0 + 0.06 * self.tex_fine[sl2])
        view[cavity] = brain[cavity]
        # medulla / pons: the cord's continuation along the clivus, in a CSF sleeve
        bs_c = v_cc - np.clip(-A, 0.0, None) * np.tan(phi)
        r_bs = 4.5 * g + 0.12 * np.clip(-A, 0.0, 40.0 * g)
        bs_r = ((B - bs_c) / r_bs) ** 2 + (C / (1.3 * r_bs)) ** 2
        csf = cavity & (bs_r < 2.2) & (A > -60.0 * g)
        # cisterna magna: behind the medulla, just above the foramen magnum
        cm = cavity & (((A + 6.0 * g) / (6.0 * g)) ** 2 + ((B - v_cc - 15.0 * g) / (8.0 * g)) ** 2 +
                       (C / (12.0 * g)) ** 2 < 1.0)
        view[csf | cm] = T["csf"]
        bs = cavity & (bs_r < 1.0) & (A > -60.0 * g)
        view[bs] = T["cord"] * 1.05
        # occipital bone (outer/inner table and diploe), open at the foramen magnum
        shell = (e >= 1.0) & (e_out < 1.0) & behind & (B > v_cc)
        shell |= (e >= 1.0) & (e_out < 1.0) & behind & (A < -25.0 * g)
        shell &= ~((A > ca + 0.8 * ra) & (np.abs(B - v_cc) < 16.0 * g) & (np.abs(C) < 15.0 * g))
        mid = ((A - ca) / (ra + 0.5 * t_b)) ** 2 + ((B - cb) / (rb + 0.5 * t_b)) ** 2 + \
            (C / (rc + 0.5 * t_b)) ** 2
        diploe = np.abs(mid - 1.0) < 0.35 * t_b / ra
        sval = np.where(diploe, T["post_marrow"], T["cortex"])
        view[shell] = sval[shell]
        clivus = (u > -1.0) & (u < 42.0 * g) & (n_ < 0) & (n_ > -11.0 * g) & (np.abs(C) < 14.0 * g)
        cl_in = clivus & (n_ < -1.5 * g) & (n_ > -9.5 * g) & (u > 1.0 * g) & (u < 40.5 * g)
        view[clivus] = T["cortex"]
        view[cl_in] = T["marrow"]
