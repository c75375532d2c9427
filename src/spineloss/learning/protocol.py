"""Learned losses and the evaluation protocol: the cases that chose a loss are never its test cases.

A search (``spineloss learn``) chooses its loss with the Dice of candidates trained on the proxy task's fit
cases and scored on its val cases; ``learned_loss.json`` records both lists under ``source.task``
(``fit_cases``, ``val_cases``) with each case's file fingerprint (``fingerprints``: ``{case_id: hash}``,
:func:`spineloss.experiment.data_fingerprints` of the image and label files). An experiment that uses the loss
(as a row, or as a term of a weighted sum) calls :func:`check_learned_losses` before it trains: an outer fold
whose test cases include such a case *with the same fingerprint* (the same data, not just the same id) is
refused. A proxy on other data (the phantom, another data set) shares no fingerprint and passes; a file that
records case ids but no fingerprints (written before they were recorded) is checked by id alone; a file
that records no cases (written by hand) is not checked.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["check_learned_losses", "chosen_cases", "leaked_cases"]


def chosen_cases(doc: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str] | None]:
    """``({case_id: "fit" | "val"}, {case_id: fingerprint} or None)``: the cases that chose a learned-loss
    document (its ``source.task``) and their recorded fingerprints (``None`` when the file has none)."""
    source = doc.get("source") if isinstance(doc, Mapping) else None
    task = source.get("task") if isinstance(source, Mapping) else None
    if not isinstance(task, Mapping):
        return {}, None
    roles: dict[str, str] = {}
    for role, key in (("fit", "fit_cases"), ("val", "val_cases")):
        ids = task.get(key) or []
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"source.task.{key} must be a list of case ids, got {type(ids).__name__}")
        for case in ids:
            roles.setdefault(str(case), role)
    recorded = task.get("fingerprints")
    if recorded is not None and not isinstance(recorded, Mapping):
        raise ValueError(f"source.task.fingerprints must map case ids to hashes, got {type(recorded).__name__}")
    return roles, (None if recorded is None else {str(k): str(v) for k, v in recorded.items()})


def leaked_cases(doc: Mapping[str, Any], test_ids: Sequence[str], fingerprints: Mapping[str, str]) -> list[str]:
    """The ``test_ids`` that chose the learned loss ``doc`` on the same data, as ``"case (fit)"`` /
    ``"case (val)"``. ``fingerprints``: the experiment's ``{case_id: hash}``. A chosen case counts when its
    recorded fingerprint equals the experiment's, or, where the file records none for it, by its id alone."""
    roles, recorded = chosen_cases(doc)
    out = []
    for case in test_ids:
        if case not in roles:
            continue
        theirs = None if recorded is None else recorded.get(case)
        if theirs is None or theirs == fingerprints.get(case):
            out.append(f"{case} ({roles[case]})")
    return out


def check_learned_losses(specs: Sequence[Any], splits: Sequence[Any], fingerprints: Mapping[str, str],
                         num_classes: int | None = None) -> None:
    """Refuse (``ValueError``) an experiment in which a learned loss was chosen on test cases of a fold, or,
    given ``num_classes`` (the network's output channels here), one that fails the search's screening
    (:func:`spineloss.learning.screening.screen`) for that many classes: a loss searched on a binary proxy is
    checked again before it trains a multi-class network.

    ``specs``: the experiment's :class:`~spineloss.experiment.LossSpec` rows (``name``, ``loss``, ``params``);
    ``splits``: its :class:`~spineloss.experiment.FoldSplit` folds (``fold``, ``test``); ``fingerprints``:
    ``{case_id: hash}`` of its data (:func:`spineloss.experiment.data_fingerprints`). The message names every
    row, file, fold and case concerned.
    """
    from .format import learned_path, learned_terms, load_document

    problems, unfit = [], []  # chosen on test cases; failing the screening for this network
    for spec in specs:
        for name in learned_terms(spec.loss, getattr(spec, "params", None)):
            path = learned_path(name)
            doc = load_document(path)
            if num_classes is not None:
                from .screening import screen
                reason = screen(doc, num_classes)
                if reason is not None:
                    unfit.append(f"  row '{spec.name}' uses {path}, which fails the screening for "
                                    f"{num_classes} output channels: {reason}")
            try:
                roles, recorded = chosen_cases(doc)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            if not roles:
                continue
            folds = []
            for split in splits:
                leaked = leaked_cases(doc, split.test, fingerprints)
                if leaked:
                    folds.append(f"fold {split.fold} tests {', '.join(leaked)}")
            if folds:
                how = ("with the same image and label files" if recorded is not None else
                       "by id (the file records no fingerprints of its data: an older spineloss)")
                problems.append(f"  row '{spec.name}' uses {path}, chosen on cases that are test cases here, {how}: "
                                + "; ".join(folds))
    if unfit:
        raise ValueError("a learned loss would not train this experiment's network:\n" + "\n".join(unfit)
                         + "\nSearch again with a proxy task of this label mode ([data] label_mode), or drop the row")
    if problems:
        raise ValueError("a learned loss was chosen (its search's fitness trained or scored on them) by test cases "
                         "of this experiment, and test cases choose nothing:\n" + "\n".join(problems)
                         + "\nEvery case of a cross-validation is a test case of some fold: search on data outside "
                         "this experiment (the phantom proxy, or another data set)")
