"""Stops at safe points, across `run` and the workers it starts: real processes, real signals."""

import signal
import subprocess
import sys
import time

import pytest

from asl_sweep.runtime import signals

STARTING = """
import sys, time
time.sleep(2)  # a worker's imports: the terminal's Ctrl-C comes here
from asl_sweep.runtime import signals
signals.install()
try:
    signals.check()
except KeyboardInterrupt as e:
    print("stop at a safe point:", e)
    sys.exit(0)
print("no stop")
"""

WORKING = """
import sys, time
from asl_sweep.runtime import signals
signals.install()
print("ready", flush=True)
try:
    time.sleep(4)  # between two safe points
except KeyboardInterrupt:
    print("at once")
    sys.exit(3)
try:
    signals.check()
except KeyboardInterrupt as e:
    print("at the safe point:", e)
"""


def test_a_ctrl_c_while_a_worker_starts_is_held_for_its_first_safe_point():
    with signals.ctrl_c_held_for_child():
        proc = subprocess.Popen([sys.executable, "-c", STARTING], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip()) == (0, "stop at a safe point: signal 2"), err


@pytest.mark.parametrize("sent, said", [
    # the terminal's Ctrl-C, then `run` passing it on: one stop, at the safe point
    ([signal.SIGINT, signals.PASSED_ON], "at the safe point: signal 2"),
    # passed on twice (by `run`, then by the orphan watch as `run` is gone): still one stop
    ([signals.PASSED_ON, signals.PASSED_ON], "at the safe point: signal 10"),
    # Ctrl-C twice: the second stops at once
    ([signal.SIGINT, signal.SIGINT], "at once"),
    # a stop passed on, then `run` asked a second time (SIGTERM): at once
    ([signals.PASSED_ON, signal.SIGTERM], "at once"),
])
def test_a_stop_passed_on_never_counts_as_the_second_signal(sent, said):
    proc = subprocess.Popen([sys.executable, "-c", WORKING], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    for signum in sent:
        proc.send_signal(signum)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == said, err
