import json
import math

import pytest

from spineloss.report import Cell, collect_results, format_latex, format_markdown, format_terminal, summary_rows, write_summary


def _fold(dice, hd, nan_hd=0):
    m = {"accuracy": 0.99, "dice": dice, "f2": dice, "iou": dice / 2, "precision": dice, "recall": dice,
         "hd": hd, "hd95": hd / 2, "assd": 1.0}
    return {"mean": {"mean": m}, "nan_counts": {"mean": {"hd": nan_hd}}}


def _run(tmp_path):
    for loss, folds in {"ce": [(0.80, 10.0), (0.82, 12.0)], "dice": [(0.90, 8.0, 1), (0.86, 20.0)]}.items():
        for k, f in enumerate(folds):
            d = tmp_path / loss / f"fold{k}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps(_fold(*f)))
    (tmp_path / "experiment.json").write_text(json.dumps({"losses": [{"name": "dice"}, {"name": "ce"}]}))
    return tmp_path


def test_cell_mean_std_and_nan():
    c = Cell([80.0, 82.0])
    assert c.mean == 81.0 and c.std == pytest.approx(math.sqrt(2.0))
    assert c.text() == "81.00 ± (1.41)"
    assert Cell([float("nan")]).text() == "NaN"
    assert Cell([1.0, float("nan")], nan_cases=2).text().endswith("[2 NaN]")


def test_rows_best_and_formats(tmp_path):
    results = collect_results(_run(tmp_path))
    assert list(results) == ["dice", "ce"]  # the config's order
    rows = summary_rows(results)
    assert rows["dice"]["Dice"].mean == pytest.approx(88.0)
    assert rows["ce"]["Hausdorff"].mean == pytest.approx(11.0)
    assert rows["dice"]["Hausdorff"].nan_cases == 1
    md = format_markdown(rows)
    assert "**88.00 ± (2.83)**" in md              # best Dice: dice
    assert "**11.00 ± (1.41)**" in md              # best (lowest) Hausdorff: ce
    assert "[1 NaN]" in md
    assert md.splitlines()[0].startswith("| Loss | Acc (%) | Dice (%) | F2 (%) | IoU (%) | Precision (%) | Recall (%) | Hausdorff (mm)")
    tex = format_latex(rows)
    assert r"\textbf{88.00 $\pm$ (2.83)}" in tex and r"\toprule" in tex
    term = format_terminal(rows, color=False)
    assert "*88.00 ± (2.83)*" in term


def test_write_summary_files(tmp_path):
    run = _run(tmp_path)
    text = write_summary(run, distance="hd95")
    assert (run / "summary.md").exists() and (run / "summary.tex").exists()
    csv_text = (run / "summary.csv").read_text().splitlines()
    assert csv_text[0].startswith("loss,Acc_mean,Acc_std,Acc_folds")
    assert "HD95" in text


def test_empty_run_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no finished runs"):
        write_summary(tmp_path)
