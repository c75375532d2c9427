import json
import math

import pytest

from spineloss.report import Cell, collect_results, format_latex, format_markdown, format_terminal, summary_rows, write_summary


def _metrics(dice, hd):
    return {"accuracy": 0.99, "dice": dice, "f2": dice, "iou": dice / 2, "precision": dice, "recall": dice,
            "hd": hd, "hd95": hd / 2, "assd": 1.0}


def _fold(dice, hd, nan_hd=0, fold=0, loss="ce"):
    """A fold's metrics.json: its mean, and 8 test cases (ce's Dice 0.08 below dice's on every case)."""
    cases = {f"case{fold}_{i}": {"mean": _metrics(dice + 0.01 * ((i * 7) % 5 - 2), hd + i)} for i in range(8)}
    return {"mean": {"mean": _metrics(dice, hd)}, "nan_counts": {"mean": {"hd": nan_hd}}, "cases": cases}


def _run(tmp_path, settings=None):
    for loss, folds in {"ce": [(0.80, 10.0), (0.82, 12.0)], "dice": [(0.88, 8.0, 1), (0.90, 20.0)]}.items():
        for k, f in enumerate(folds):
            d = tmp_path / loss / f"fold{k}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps(_fold(*f, fold=k, loss=loss)))
    (tmp_path / "experiment.json").write_text(json.dumps({"losses": [{"name": "dice"}, {"name": "ce"}],
                                                          **(settings or {})}))
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
    assert rows["dice"]["Dice"].mean == pytest.approx(89.0)
    assert rows["ce"]["Hausdorff"].mean == pytest.approx(11.0)
    assert rows["dice"]["Hausdorff"].nan_cases == 1
    md = format_markdown(rows)
    assert "**89.00 ± (1.41)**" in md              # best Dice: dice
    assert "**11.00 ± (1.41)**" in md              # best (lowest) Hausdorff: ce
    assert "[1 NaN]" in md
    assert md.splitlines()[0].startswith("| Loss | Acc (%) | Dice (%) | F2 (%) | IoU (%) | Precision (%) | Recall (%) | Hausdorff (mm)")
    tex = format_latex(rows)
    assert r"\textbf{89.00 $\pm$ (1.41)}" in tex and r"\toprule" in tex
    term = format_terminal(rows, color=False)
    assert "*89.00 ± (1.41)*" in term


def test_write_summary_files(tmp_path):
    run = _run(tmp_path)
    text = write_summary(run, distance="hd95")
    assert (run / "summary.md").exists() and (run / "summary.tex").exists()
    csv_text = (run / "summary.csv").read_text().splitlines()
    assert csv_text[0].startswith("loss,Acc_mean,Acc_std,Acc_folds")
    assert "HD95" in text


def test_significance_daggers_and_protocol_note(tmp_path):
    """ce is 0.08 Dice below dice on each of the 16 paired cases: significant, so its Dice cell has a
    dagger. ce has the lower (best) mean HD95, and the dagger on dice's HD95 cell follows stats.csv."""
    run = _run(tmp_path, {"table_distance": "hd95", "protocol": "PROTOCOL SENTENCE."})
    write_summary(run)  # the distance column defaults to the run's table_distance
    md = (run / "summary.md").read_text()
    def cells(loss):
        line = next(line for line in md.splitlines() if line.startswith(f"| {loss} |"))
        return [c.strip() for c in line.strip().strip("|").split("|")]
    ce, dice = cells("ce"), cells("dice")
    assert len(ce) == 8 and ce[0] == "ce"
    assert ce[2].endswith("†") and not dice[2].endswith("†")            # Dice column
    assert "HD95" in md.splitlines()[0]
    assert "PROTOCOL SENTENCE." in md and "Holm" in md
    assert r"$^\dagger$" in (run / "summary.tex").read_text()
    from spineloss.report.stats import read_stats
    stats = {(c.metric, c.loss): c for c in read_stats(run / "stats.csv")}
    assert set(stats) == {("dice", "ce"), ("hd95", "dice")}      # each against the bolded best
    assert stats[("dice", "ce")].best == "dice" and stats[("dice", "ce")].significant
    assert stats[("hd95", "dice")].best == "ce" and ce[7].startswith("**")
    assert dice[7].endswith("†") == stats[("hd95", "dice")].significant
    assert "selection" in (run / "stats.csv").read_text().splitlines()[0]


def test_empty_run_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no finished runs"):
        write_summary(tmp_path)
