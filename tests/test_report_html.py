"""The HTML report (spineloss.report.html, spineloss.report.plots): the page's content, that it is
self-contained, the command line, and a real headless browser (Debian's chromium) rendering it.

The run folder is written by hand (metrics.json, history.csv, pictures, params.csv, an analysis folder):
valid result files of a partial grid, no training, so the module takes a few seconds.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from spineloss.cli import main
from spineloss.report.html import build_report, write_report
from spineloss.report.plots import box_plot, training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(width: int = 8, height: int = 6, rgb=(30, 120, 200)) -> bytes:
    """A valid RGB PNG of one colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _metrics(dice: float, hd: float) -> dict:
    return {"accuracy": 0.99, "dice": dice, "f2": dice, "iou": dice / 2, "precision": dice, "recall": dice,
            "hd": hd, "hd95": hd / 2, "assd": 1.0}


#: loss -> per fold its mean Dice; each fold has 4 test cases, fold k of every loss the same cases.
#: dice: 3 folds; ce: 2 folds, Dice 0.1 below dice's on every case; focal: 1 fold and one still training.
GRID = {"dice": [0.90, 0.88, 0.86], "ce": [0.80, 0.78], "focal": [0.84]}


def _write_fold(d: Path, loss: str, k: int, dice: float) -> None:
    d.mkdir(parents=True, exist_ok=True)
    cases = {}
    for i in range(4):
        hd = 10.0 + 3 * i + (5.0 if loss == "ce" else 0.0) + k
        value = _metrics(dice + 0.01 * (i - 1.5), hd)
        if loss == "ce" and k == 1 and i == 3:
            value["hd"] = value["hd95"] = float("nan")   # one empty mask: a NaN distance
        cases[f"case{k}_{i}"] = {"mean": value}
    finite = [c["mean"]["hd"] for c in cases.values() if math.isfinite(c["mean"]["hd"])]
    mean = _metrics(dice, sum(finite) / len(finite))
    nan = sum(1 for c in cases.values() if not math.isfinite(c["mean"]["hd"]))
    (d / "metrics.json").write_text(json.dumps({
        "mean": {"mean": mean}, "nan_counts": {"mean": {"hd": nan, "hd95": nan}}, "cases": cases,
        "flags": {"case0_0": ["bodies:4"]} if loss == "ce" else {}, "train_seconds": 60.0 * (k + 1),
        "environment": {"device": "cpu", "amp": "bfloat16", "torch": "2.13.0+cpu", "spineloss": "0.1.0"}}))
    _write_history(d, loss)


def _write_history(d: Path, loss: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,lr,train_loss,val_dice,skipped_steps,seconds"]
    for e in range(1, 6):
        val = f"{0.5 + 0.08 * e:.3f}" if loss == "dice" else "nan"
        lines.append(f"{e},0.001,{1.0 / e:.4f},{val},0,1.5")
    (d / "history.csv").write_text("\n".join(lines) + "\n")


def make_run(root: Path, pictures: bool = True, tuning: bool = True, analysis: bool = True) -> Path:
    """A partial grid: 3 losses with 3, 2 and 1 finished folds (+ one fold still training)."""
    for loss, folds in GRID.items():
        for k, dice in enumerate(folds):
            _write_fold(root / loss / f"fold{k}", loss, k, dice)
    _write_history(root / "focal" / "fold1", "focal")          # training: history, no metrics.json yet
    if pictures:
        for loss, (best, worst) in {"dice": ("case0_3", "case2_0"), "ce": ("case0_2", "case1_0")}.items():
            (root / loss / "pictures").mkdir()
            (root / loss / "pictures" / f"best_{best}.png").write_bytes(_png(rgb=(20, 160, 60)))
            (root / loss / "pictures" / f"worst_{worst}.png").write_bytes(_png(rgb=(200, 40, 40)))
    if tuning:
        (root / "ce" / "fold0" / "params.csv").write_text("step,alpha\n0,0.5\n10,0.475\n20,0.45\n")
    if analysis:
        (root / "analysis").mkdir()
        (root / "analysis" / "summary.md").write_text(
            "# Loss analysis on synthetic shapes\n\nInput: `logits` of **p**.\n\n"
            "## size: Structure size\n\nx = radius.\n\n- **dice**: decreases with size\n- **ce**: grows\n")
        (root / "analysis" / "size.png").write_bytes(_png(rgb=(90, 90, 220)))
        (root / "analysis" / "extra.png").write_bytes(_png(rgb=(220, 180, 0)))
    (root / "experiment.json").write_text(json.dumps({
        "name": "tiny_grid", "folds": 3, "seed": 0, "selection": "last", "table_distance": "hd",
        "protocol": "PROTOCOL SENTENCE <of the run>.",
        "data": {"path": "data/lumbar", "label_mode": "binary", "phantom": None},
        "training": {"epochs": 5, "batch_size": 2, "lr": 0.001, "channels_last": True},
        "postprocess": {"caudal_bodies": 5},
        "losses": [{"name": "dice", "loss": "dice", "params": {}, "tuning": None},
                   {"name": "ce", "loss": {"ce": 1.0, "dice": 0.5}, "params": {},
                    "tuning": {"greedy": {"parameters": ["alpha"]}}},
                   {"name": "focal", "loss": "focal", "params": {"gamma": 2.0}, "tuning": None}]}))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The grid above and its page, written once for the module."""
    run = make_run(tmp_path_factory.mktemp("grid"))
    return write_report(run)


def _images(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def _results_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="sortable results">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]


# ----------------------------------------------------------------------------------------------------
# the page as text
# ----------------------------------------------------------------------------------------------------

def test_results_table_bold_best_and_daggers(report):
    page = report.read_text()
    assert report.name == "report.html"
    rows = _results_rows(page)
    assert [re.sub(r"<.*?>", "", r[0]) for r in rows] == ["dice", "focal", "ce"]   # ordered by Dice, best first
    header = re.search(r'<table class="sortable results">.*?<thead>(.*?)</thead>', page, re.S).group(1)
    assert 'aria-sort="descending">Dice (%)</th>' in header and "Hausdorff (mm)" in header
    dice, focal, ce = rows
    assert dice[2].startswith("<strong>88.00 ± (2.00)</strong>")              # best Dice in bold
    # ce is 0.10 Dice below dice on each of its 8 cases: exact Wilcoxon p = 2/256, Holm x2: significant
    assert 'class="dagger"' in ce[2] and 'class="dagger"' not in dice[2]
    assert "[1 NaN]" in ce[7]                                                    # the NaN distance is counted
    assert [r[-1] for r in rows] == ["3", "1", "2"]                             # folds per loss
    assert 'data-sort="88.0"' in page                                           # numeric sort keys


def test_sections_and_partial_grid(report):
    page = report.read_text()
    for key in ("results", "distributions", "training", "tuning", "pictures", "analysis", "config"):
        assert f'<section id="{key}">' in page and f'href="#{key}"' in page
    assert "PROTOCOL SENTENCE &lt;of the run&gt;." in page                      # escaped
    assert "1 ce + 0.5 dice" in page and "greedy" in page                        # the losses of the config
    runs = re.search(r"<h3>Runs</h3>(.*?)</table>", page, re.S).group(1)
    focal = next(r for r in re.findall(r"<tr>(.*?)</tr>", runs, re.S) if "focal" in r)
    assert "1 / 3" in focal and "fold1" in focal                                 # 1 of 3 folds, one training
    assert "best</b> test case by Dice: case0_3" in page and "worst</b> test case by Dice: case1_0" in page
    assert (report.parent / "ce" / "tuning.png").exists()                        # drawn by report.trajectories
    assert "<li><strong>dice</strong>: decreases with size</li>" in page         # the analysis summary
    assert page.index('alt="analysis: size"') < page.index('alt="analysis: extra"')
    assert page.count("<img ") == 2 + 1 + 1 + 4 + 2     # box plots, curves, tuning, pictures, analysis


def test_page_is_self_contained(report):
    page = report.read_text()
    images = _images(page)
    assert len(images) == page.count("<img ") == 10
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert not re.search(r"https?://", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert re.findall(r"<script\b[^>]*>", page) == ["<script>"]                 # one inline script, no src


def test_page_without_pictures_tuning_or_analysis(tmp_path):
    run = make_run(tmp_path / "run", pictures=False, tuning=False, analysis=False)
    page = build_report(run, distance="hd95")
    for key in ("pictures", "tuning", "analysis"):
        assert f'<section id="{key}">' not in page
    assert "HD95, mm" in page and len(_images(page)) == 3
    # one finished fold, no history: still a page
    (run / "experiment.json").write_text(json.dumps({"losses": [{"name": "dice"}]}))
    shutil.rmtree(run / "ce")
    shutil.rmtree(run / "focal")
    for k in (1, 2):
        shutil.rmtree(run / "dice" / f"fold{k}")
    (run / "dice" / "fold0" / "history.csv").unlink()
    page = build_report(run)
    assert '<section id="training">' not in page and len(_results_rows(page)) == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "dice" / "fold0").mkdir(parents=True)
    with pytest.raises(ValueError, match="no experiment.json"):
        build_report(tmp_path)
    (tmp_path / "experiment.json").write_text("{}")
    with pytest.raises(ValueError, match="no finished runs"):
        build_report(tmp_path)
    run = make_run(tmp_path / "run", pictures=False, tuning=False, analysis=False)
    with pytest.raises(ValueError, match="--analysis .*no such folder"):
        build_report(run, analysis=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="neither summary.md nor a PNG"):
        build_report(run, analysis=tmp_path / "dice")


def test_cli_writes_tables_and_page(tmp_path, capsys):
    run = make_run(tmp_path / "run", pictures=False, tuning=False, analysis=False)
    analysis = tmp_path / "elsewhere"
    analysis.mkdir()
    (analysis / "shape.png").write_bytes(_png())
    out = tmp_path / "pages" / "grid.html"
    assert main(["report", str(run), "--out", str(out), "--analysis", str(analysis)]) == 0
    printed = capsys.readouterr().out
    assert "Dice (%)" in printed and f"wrote {out}" in printed
    assert (run / "summary.md").exists() and (run / "stats.csv").exists()      # the tables, as before
    page = out.read_text()
    assert "as in stats.csv" in page and 'alt="analysis: shape"' in page       # daggers from the fresh stats.csv
    assert not (run / "report.html").exists()                                   # (default: fixture above)
    assert main(["report", str(tmp_path / "nowhere")]) == 2


# ----------------------------------------------------------------------------------------------------
# the figures
# ----------------------------------------------------------------------------------------------------

def test_plots_are_pngs():
    import io

    import matplotlib.image as mpimg

    png = box_plot({"Dice (%)": {"a": [80.0, 82.0, 85.0], "b": [70.0]},
                    "Hausdorff (mm)": {"a": [5.0, float("nan"), 7.0], "b": [9.0]}}, "title",
                   lower_is_better=["Hausdorff (mm)"])
    image = mpimg.imread(io.BytesIO(png), format="png")
    assert png.startswith(PNG_SIGNATURE) and image.shape[1] == 1280 and image[..., :3].var() > 0
    assert b"matplotlib.org" not in png                                          # no Software chunk
    curves = training_curves({"dice": {"fold0": [{"epoch": 1, "train_loss": 1.0, "val_dice": 0.5},
                                                 {"epoch": 2, "train_loss": 0.5, "val_dice": 0.7}]},
                              "ce": {"fold0": [{"epoch": 1, "train_loss": 0.7}]}}, {"ce": ["fold0"]})
    assert mpimg.imread(io.BytesIO(curves), format="png").shape[1] == 1280
    with pytest.raises(ValueError, match="no history rows"):
        training_curves({"dice": {}})
    with pytest.raises(ValueError, match="at least one panel"):
        box_plot({})


# ----------------------------------------------------------------------------------------------------
# a real browser
# ----------------------------------------------------------------------------------------------------

def _chromium() -> str:
    for name in (os.environ.get("SPINELOSS_CHROMIUM"), "chromium", "chromium-browser"):
        path = shutil.which(name) if name else None
        if path:
            return path
    pytest.skip("chromium not found (Debian: apt-get install chromium; `make test` installs it when it can): "
                "the headless-browser check of the HTML report is skipped")


_HOOKS = """<script>window.__errors = [];
addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + (e.target && e.target.tagName)));
}, true);
(function () { var err = console.error; console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, " ")); err.apply(console, arguments); }; })();
</script>"""

_CHECK = """<script>addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var table = document.querySelector("table.results");
  function firstLoss() { return table.tBodies[0].rows[0].cells[0].textContent.trim(); }
  var result = {images: images.length, errors: window.__errors, rows: table.tBodies[0].rows.length,
                broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                              .map(function (i) { return i.alt; }),
                first: firstLoss()};
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  heads.filter(function (th) { return th.textContent.indexOf("Hausdorff") === 0; })[0].click();
  result.first_by_hausdorff = firstLoss();
  heads[0].click();
  result.first_by_name = firstLoss();
  var pre = document.createElement("pre");
  pre.id = "__check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
  console.log("__probe__");
});</script>"""


def test_page_in_headless_chromium(report, tmp_path):
    """Screenshot of the page as shipped; then a copy with test hooks (error listeners first in <head>,
    a check on load at the end) run with --dump-dom: the table is there, every image decoded
    (naturalWidth > 0), a header click sorts, and the browser's console shows nothing from the page
    (the probe line proves the console is captured)."""
    chromium = _chromium()
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "screenshot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image as mpimg
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2000, 1280) and pixels[..., :3].var() > 1e-3   # drawn, not blank

    page = report.read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>\n" + _HOOKS, 1).replace("</body>", _CHECK + "\n</body>", 1))
    run = subprocess.run(base + ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                                 checked.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="__check">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the check did not run; chromium said:\n{run.stderr[-3000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["images"] == 10 and result["broken"] == []
    assert result["rows"] == 3 and result["first"] == "dice"
    assert result["first_by_hausdorff"] == "focal" and result["first_by_name"] == "ce"   # lowest HD; a-z
    assert result["errors"] == []
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert any("__probe__" in line for line in console), f"console not captured:\n{run.stderr[-3000:]}"
    assert [line for line in console if "__probe__" not in line] == []
