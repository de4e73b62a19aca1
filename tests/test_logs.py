"""cwnnk.logs.Progress: the progress lines a long job writes into its log."""

import re

from cwnnk.logs import Progress


def test_progress_lines_first_every_twentieth_and_last():
    lines = []
    progress = Progress(40, "batch", lines.append, every_s=1e9)
    for i in range(40):
        progress.step(detail=f"train: {8 * (i + 1)}/320 samples")
    done = [int(re.match(r"batch (\d+)/40 done", line).group(1)) for line in lines]
    assert done == [1, *range(2, 41, 2)]  # the first, every 40 // 20 = 2, and the last
    assert lines[0].startswith("batch 1/40 done (train: 8/320 samples, ")
    assert "batch/s" in lines[0] and "left)" in lines[0]
    assert "left" not in lines[-1] and lines[-1].startswith("batch 40/40 done (train: 320/320 samples")


def test_progress_steps_of_several_and_time_based_lines():
    lines = []
    progress = Progress(17, "point set", lines.append, every_s=0.0)  # every step is due by time
    for n in (8, 8, 1):
        progress.step(n)
    assert [line.split(" (")[0] for line in lines] == ["point set 8/17 done", "point set 16/17 done",
                                                       "point set 17/17 done"]
