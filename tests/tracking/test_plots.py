"""Plots load quietly for a user whose home cannot be written."""

import itertools
import os
import subprocess
import sys


def test_matplotlib_says_nothing_when_the_home_cannot_be_written(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "HOME": "/etc/passwd", "XDG_CONFIG_HOME": "",  # a file: no folder
           "TMPDIR": str(temporary)}
    env.pop("MPLCONFIGDIR", None)
    draw = ("import pathlib, asl_sweep.tracking.plots as p; "
            f"p.plot_curves([1, 2], {{k: [0.1, 0.2] for k in ('train_loss', 'val_loss', 'train_acc', 'val_acc')}}, pathlib.Path({str(tmp_path)!r}) "
            "/ 'c.png', 'curves')")

    def drawn() -> list[str]:
        proc = subprocess.run([sys.executable, "-c", draw], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "" and (tmp_path / "c.png").stat().st_size > 1000
        return sorted(p.name for p in temporary.iterdir())

    # One folder for every command, not one left behind by each (95 in a day's /tmp here).
    assert drawn() == drawn() == [f"asl-sweep-matplotlib-{os.getuid()}"]
    # That name held by a link (another user's doing): not followed, a fresh folder instead.
    (temporary / f"asl-sweep-matplotlib-{os.getuid()}").rename(temporary / "elsewhere")
    (temporary / f"asl-sweep-matplotlib-{os.getuid()}").symlink_to(temporary / "elsewhere")
    assert len(drawn()) == 3


def test_the_search_history_counts_trials_in_whole_numbers():
    from asl_sweep.tracking.plots import history_figure

    fig = history_figure([1, 2, 4], [0.3, 0.5, 0.4], "val_acc", True)
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_the_search_history_draws_pruned_trials_apart_from_the_best_so_far():
    from asl_sweep.tracking.plots import history_figure

    fig = history_figure([1, 2], [0.3, 0.5], "val_acc", True, pruned=[(3, 0.9), (4, 0.2)])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    crosses = lines["pruned (best epoch before it stopped)"]
    assert list(crosses.get_xdata()) == [3, 4] and list(crosses.get_ydata()) == [0.9, 0.2]
    # A pruned trial's partial value never becomes the best so far.
    assert max(lines["best so far"].get_ydata()) == 0.5


def test_the_confusion_matrix_class_names_do_not_run_into_each_other():
    """Names longer than a letter (class_00 ... class_59) ran together along the x axis (two
    pixels apart: "class_00class_01")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from asl_sweep.tracking.plots import confusion_figure

    for classes in (list("ABCDEFGHI"), [f"class_{i:02d}" for i in range(60)]):
        n = len(classes)
        fig = confusion_figure([[1] * n for _ in range(n)], classes)
        canvas = FigureCanvasAgg(fig)  # lays the figure out as it is saved
        canvas.draw()
        renderer = canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
        assert len(boxes) == n
        space = fig.axes[0].get_xticklabels()[0].get_fontsize() * fig.dpi / 72 / 2  # half an em
        gaps = [b.x0 - a.x1 for a, b in itertools.pairwise(boxes)]
        assert min(gaps) >= space, (classes[:2], min(gaps))


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
from matplotlib.figure import Figure
from asl_sweep.runtime.errors import WriteError
from asl_sweep.tracking.plots import _save
fig = Figure()
fig.add_subplot().plot(range(100))
try:
    _save(fig, Path(sys.argv[1]))
except WriteError as e:
    print(e)
"""


def test_a_figure_the_disk_does_not_take_is_named_and_left_unwritten(tmp_path):
    """A real write limit (RLIMIT_FSIZE, as a full disk): the line names the PNG (PIL's own
    write named 'a file'), and no cut PNG is left where the report links it."""
    path = tmp_path / "curves.png"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.startswith(f"{path}: could not be written (File too large)"), done
    assert not path.exists() and list(tmp_path.iterdir()) == []
