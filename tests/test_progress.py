import io

from spineloss.progress import GridProgress, format_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_counts_and_time_left_from_this_invocations_epochs():
    clock, out = Clock(), io.StringIO()
    view = GridProgress(total_runs=4, epochs=10, stream=out, interactive=False, clock=clock)
    view.skip("ce fold 0")                     # finished before: no time measured
    assert view.line() == "grid 1/4 done, 0 running, 3 left | time left unknown yet"
    view.start("ce fold 1", start_epoch=4)     # resumed after 4 epochs
    clock.t = 20.0
    view.epoch(5)
    clock.t = 40.0
    view.epoch(6)                              # 2 epochs in 40 s: 20 s an epoch
    assert view.seconds_left() == 20.0 * (4 + 2 * 10)
    assert view.line().startswith("grid 1/4 done, 1 running, 2 left | ce fold 1: epoch 6/10 | ~8 min left")
    for e in range(7, 11):
        clock.t += 20.0
        view.epoch(e)
    clock.t += 40.0                            # evaluation: counted in the time per epoch
    view.finish("[ce fold 1] test Dice 0.9")
    assert view.done == 2 and view.current is None
    assert view.seconds_left() == (160.0 / 6) * 20   # 2 runs left at 26.7 s an epoch
    text = out.getvalue()
    assert "\r" not in text                    # a log file gets whole lines only
    assert text.splitlines() == ["[ce fold 0] done already, skipped",
                                 "[ce fold 1] test Dice 0.9  [grid 2/4 done, 0 running, 2 left | ~9 min left]"]


def test_terminal_redraws_one_line():
    clock, out = Clock(), io.StringIO()
    view = GridProgress(total_runs=2, epochs=3, stream=out, interactive=True, clock=clock)
    view.start("dice fold 0")
    for e in (1, 2, 3):
        clock.t += 1.0
        view.epoch(e)
    view.finish("[dice fold 0] test Dice 0.8")
    view.close()
    text = out.getvalue()
    assert text.count("\n") == 2                       # the result line and the final newline
    assert text.count("\r") >= 4                       # every update redraws the same line
    assert "dice fold 0: epoch 3/3" in text and "[dice fold 0] test Dice 0.8\n" in text
    assert text.rstrip().endswith("grid 1/2 done, 0 running, 1 left | ~3 s left")


def test_format_duration():
    assert format_duration(45) == "45 s"
    assert format_duration(12 * 60) == "12 min"
    assert format_duration(2 * 3600 + 5 * 60) == "2 h 05 min"
