"""The learned-loss file: one JSON document that ``build_loss("learned:PATH")`` turns into a loss module.

Every search of :mod:`spineloss.learning` writes ``learned_loss.json``; configs use it like any loss::

    losses = ["dice", "learned:runs/learn_genetic/learned_loss.json"]          # row "learned_learn_genetic"
    losses = [{ name = "glo", loss = "learned:runs/learn_genetic/learned_loss.json" }]

(relative paths are relative to the current directory, as ``[data] path``). The document::

    {"format": "spineloss-learned-loss", "version": 2, "kind": KIND, ...kind's fields..., "readable": TEXT,
     "source": {...how it was found: method, fitness, proxy task, case ids and their files' fingerprints...}}

* ``"expression"``: ``formula`` (prefix-call text over p, g, TP, FP, FN and named constants ``c0, c1, ...``,
  :mod:`.expression`) and ``constants`` ``{"c0": 0.5, ...}``;
* ``"taylor"``: ``family`` (:class:`~spineloss.learning.taylor.TaylorFamily` as a dict, with its definition
  in words) and ``coefficients`` ``{name: value}``;
* ``"meta"``: ``network`` (:meth:`~spineloss.learning.meta.MetaLossNet.config`) and ``state``
  ``{parameter name: nested lists of numbers}``.

Only plain JSON (numbers written with ``repr``, so float32 weights and float64 constants read back bit for
bit): no pickled Python objects, nothing is evaluated when a file is read (formulas go through a whitelist
parser). ``readable`` is for people and loading ignores it; ``source`` is provenance, and an experiment reads
its ``task`` (the proxy's ``fit_cases``, ``val_cases`` and ``fingerprints``) to refuse a fold whose test cases
chose the loss (:mod:`.protocol`).

Versions: 2 made the protected division and log of expressions continuous (:mod:`.expression`). A version 1
``"expression"`` file whose formula uses ``div`` or ``log`` meant something else and is refused (run the
search again, or, to accept the new meaning for that formula, set ``"version": 2``); any other version 1 file
means the same under version 2 and loads (and is written back as version 2).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..losses.base import Loss

__all__ = ["FORMAT", "KINDS", "PREFIX", "VERSION", "document_of", "file_digest", "learned_digest", "learned_digests",
           "learned_loss_class", "learned_path", "learned_row_name", "learned_terms", "load_document",
           "load_learned_loss", "loss_class", "loss_from_document", "save_learned_loss"]

FORMAT = "spineloss-learned-loss"
VERSION = 2
#: primitives whose value changed in version 2 (continuous protections)
_CHANGED_IN_2 = ("div", "log")
KINDS = ("expression", "taylor", "meta")
PREFIX = "learned:"
_FIELDS = {"expression": {"formula", "constants"}, "taylor": {"family", "coefficients"}, "meta": {"network", "state"}}
_OPTIONAL = {"format", "version", "kind", "readable", "source"}


def learned_path(name: Any) -> Path | None:
    """The path of a ``"learned:PATH"`` loss name, or ``None`` for any other name."""
    if not isinstance(name, str) or not name.strip().lower().startswith(PREFIX):
        return None
    path = name.strip()[len(PREFIX):].strip()
    if not path:
        raise ValueError(f"loss {name!r}: write learned:PATH, the path of a learned_loss.json")
    return Path(path)


def learned_row_name(name: str) -> str:
    """A results-folder name for a ``"learned:PATH"`` row given without a name: ``learned_<search folder>``
    for ``.../<search folder>/learned_loss.json``, else ``learned_<file stem>``."""
    path = learned_path(name)
    if path is None:
        raise ValueError(f"{name!r} is not a learned:PATH loss name")
    stem = path.parent.name if path.stem == "learned_loss" and path.parent.name else path.stem
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    return f"learned_{safe}"


def file_digest(path: str | Path) -> str:
    """BLAKE2b (16 hex digits) of the file's bytes: the identity of a learned loss in a run's record."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()


def learned_digest(name: str) -> str:
    """:func:`file_digest` of the file of a ``"learned:PATH"`` name, after checking that it is a learned loss."""
    path = learned_path(name)
    if path is None:
        raise ValueError(f"{name!r} is not a learned:PATH loss name")
    load_document(path)
    return file_digest(path)


def learned_terms(loss: Any, params: Mapping[str, Any] | None = None) -> list[str]:
    """The ``"learned:PATH"`` names a loss of a config uses, in order: the loss itself, the terms of a weighted
    sum given as a mapping (``{ dice = 1.0, "learned:PATH" = 1.0 }`` or ``{ "learned:PATH" = { weight = w } }``),
    or the ``terms`` parameter of ``"weighted_sum"``."""
    if isinstance(loss, str):
        if learned_path(loss) is not None:
            return [loss]
        if loss.strip().lower() == "weighted_sum" and isinstance((params or {}).get("terms"), Mapping):
            return learned_terms(params["terms"])
        return []
    if isinstance(loss, Mapping):
        return [name for name in loss if learned_path(name) is not None]
    return []


def learned_digests(loss: Any, params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{"learned:PATH": learned_digest}`` for every learned term of a loss (:func:`learned_terms`)."""
    return {name: learned_digest(name) for name in learned_terms(loss, params)}


def loss_class(doc: Mapping[str, Any]) -> type[Loss]:
    """The :class:`~spineloss.losses.base.Loss` subclass of a document's ``kind``."""
    kind = doc.get("kind") if isinstance(doc, Mapping) else None
    if kind == "expression":
        from .expression import ExpressionLoss
        return ExpressionLoss
    if kind == "taylor":
        from .taylor import TaylorLoss
        return TaylorLoss
    if kind == "meta":
        from .meta import MetaLoss
        return MetaLoss
    raise ValueError(f"a learned loss needs kind = one of {list(KINDS)}, got {kind!r}")


def check_document(doc: Any, where: str = "learned loss") -> dict:
    """``doc`` checked: a JSON object of a known kind with exactly its fields (``ValueError`` naming what
    to fix); returns it as a dict."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: a learned-loss document is a JSON object, got {type(doc).__name__}")
    doc = dict(doc)
    if doc.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{where}: format is {doc.get('format')!r}, not {FORMAT!r} (not a spineloss learned loss)")
    version = doc.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: version must be an integer >= 1, got {version!r}")
    if version > VERSION:
        raise ValueError(f"{where}: version {version!r} is newer than this spineloss reads ({VERSION}); update "
                         "spineloss")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
    if version == 1 and kind == "expression":
        _check_version_1_formula(doc.get("formula"), where)
    missing = sorted(_FIELDS[kind] - set(doc))
    extra = sorted(set(doc) - _FIELDS[kind] - _OPTIONAL)
    if missing or extra:
        raise ValueError(f"{where}: a {kind!r} learned loss needs {sorted(_FIELDS[kind])}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    return doc


def _check_version_1_formula(formula: Any, where: str) -> None:
    """A version 1 expression whose formula divides or takes a log meant something else: refuse it."""
    import re
    if not isinstance(formula, str):
        return  # the formula's own check says what is wrong
    used = sorted(set(re.findall(r"\b(" + "|".join(_CHANGED_IN_2) + r")\s*\(", formula)))
    if used:
        raise ValueError(f"{where}: a version 1 learned formula that uses {used}: version 1's protected division "
                         "returned 1 and its protected log returned 0 where the argument was within 1e-6 of 0; "
                         f"version {VERSION} makes them continuous (a confidently wrong prediction is no longer "
                         "scored as perfect), so the formula no longer means what was searched. Run the search "
                         f"again, or set \"version\": {VERSION} in the file to accept the new meaning")


def _constructor_args(doc: dict) -> dict:
    kind = doc["kind"]
    if kind == "expression":
        return {"formula": doc["formula"], "constants": doc["constants"]}
    if kind == "taylor":
        return {"coefficients": doc["coefficients"], "family": doc["family"]}
    return {"network": doc["network"], "state": doc["state"]}


def loss_from_document(doc: Mapping[str, Any], where: str = "learned loss", **params: Any) -> Loss:
    """The loss module of a document; ``params``: ``reduction``, ``activation`` (as every loss)."""
    doc = check_document(doc, where)
    cls = loss_class(doc)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]
    own = set(_constructor_args(doc))
    unknown = sorted(k for k in params if k not in accepted or k in own)
    if unknown:
        raise ValueError(f"{where}: a {doc['kind']!r} learned loss takes no parameter(s) {unknown}; it takes "
                         f"{sorted(set(accepted) - own)}")
    try:
        return cls(**_constructor_args(doc), **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def document_of(loss: Loss, source: Mapping[str, Any] | None = None) -> dict:
    """The document of a learned loss module (``source``: provenance written along)."""
    from .expression import ExpressionLoss
    from .meta import MetaLoss, plain_state
    from .taylor import TaylorLoss
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if isinstance(loss, ExpressionLoss):
        doc.update(kind="expression", formula=loss.formula, constants=dict(loss.constants),
                   readable=loss.readable())
    elif isinstance(loss, TaylorLoss):
        doc.update(kind="taylor", family=loss.family.to_dict(), coefficients=dict(loss.coefficients), readable=loss.readable())
    elif isinstance(loss, MetaLoss):
        net = loss.network
        doc.update(kind="meta", network=net.config(), state=plain_state(net),
                   readable=f"mean softplus(MLP{[net.in_features] + net.hidden + [1]}({'p, g, TP, FP, FN' if net.region_features else 'p, g'}))")
    else:
        raise ValueError(f"document_of: {type(loss).__name__} is not a learned loss (expression, taylor or meta)")
    if source:
        doc["source"] = dict(source)
    return doc


def _finite_json(obj: Any) -> Any:
    """``obj`` with non-finite floats written as strings (strict JSON), e.g. a fitness of NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, Mapping):
        return {str(k): _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def save_learned_loss(path: str | Path, loss_or_doc: Loss | Mapping[str, Any],
                      source: Mapping[str, Any] | None = None) -> Path:
    """Write a learned loss (module or document) to ``path`` atomically; checks that it loads back."""
    doc = document_of(loss_or_doc, source) if isinstance(loss_or_doc, Loss) else dict(loss_or_doc)
    if source and "source" not in doc:
        doc["source"] = dict(source)
    loss_from_document(doc, str(path))  # never write a file that does not load (nor an old formula's meaning)
    doc = {"format": FORMAT, "version": VERSION, **{k: v for k, v in doc.items() if k not in ("format", "version")}}
    text = json.dumps(_finite_json(doc), indent=1, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def load_document(path: str | Path) -> dict:
    """Read and check a learned-loss file; ``ValueError`` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such learned-loss file (write learned:PATH with the learned_loss.json of a "
                         "`spineloss learn` run)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON learned-loss file ({exc})") from None
    return check_document(doc, str(path))


def learned_loss_class(path: str | Path) -> type[Loss]:
    """A loss class bound to the file at ``path``: its constructor takes only ``reduction`` and
    ``activation``, so the registry's :func:`~spineloss.losses.build_loss` and weighted sums
    (``{"dice": 1.0, "learned:PATH": 1.0}``) build it like any registered loss. Its ``name`` is
    :func:`learned_row_name` of the path."""
    path = Path(path)
    doc = load_document(path)
    base = loss_class(doc)
    args = _constructor_args(doc)
    where = str(path)

    def __init__(self, reduction: str = "mean", activation: str | None = None) -> None:
        try:
            base.__init__(self, **args, reduction=reduction, activation=activation)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc

    name = learned_row_name(PREFIX + where)
    return type(f"Learned{base.__name__}", (base,), {"__init__": __init__, "name": name, "source_path": where,
                                                     "__doc__": f"{base.__name__} loaded from {where}."})


def load_learned_loss(path: str | Path, **params: Any) -> Loss:
    """The loss module stored in ``path`` (``params``: ``reduction``, ``activation``)."""
    return loss_from_document(load_document(path), str(path), **params)
