"""A run whose network predicts no foreground says so (spineloss.one_run.empty_predictions, collapse_warning)."""
from __future__ import annotations

import numpy as np

from spineloss.metrics import compute_metrics
from spineloss.one_run import collapse_warning, empty_predictions


def _case(prediction: np.ndarray, reference: np.ndarray) -> dict:
    return compute_metrics(prediction, reference, (1.0, 1.0, 1.0), [1])


def test_empty_predictions_counts_the_cases_without_any_predicted_foreground():
    reference = np.zeros((8, 8, 8), dtype=np.uint8)
    reference[2:5, 2:5, 2:5] = 1
    wrong_place = np.zeros_like(reference)
    wrong_place[6:8, 6:8, 6:8] = 1            # Dice 0 too, but something was predicted
    cases = {"empty": _case(np.zeros_like(reference), reference), "good": _case(reference.copy(), reference),
             "wrong_place": _case(wrong_place, reference)}
    assert cases["wrong_place"]["mean"]["dice"] == 0.0
    assert empty_predictions(cases) == 1


def test_collapse_warning_names_the_count_and_is_silent_without_empty_cases():
    assert collapse_warning({"dice": 0.8, "test_cases": 6, "empty_cases": 0}) == ""
    assert collapse_warning({"dice": 0.8}) == ""            # a run without test cases
    text = collapse_warning({"dice": 0.0, "test_cases": 6, "empty_cases": 6})
    assert "6 of 6 test cases" in text and "weights.csv" in text
