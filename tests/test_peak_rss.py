"""peak_rss() measures the process itself, not the parent it was forked from."""
import subprocess
import sys

import numpy as np


def test_child_of_a_large_process_reports_its_own_peak():
    big = np.ones(800_000_000 // 8)     # this (parent) process holds ~800 MB
    big += 1
    code = "from slmx.train.diagnostics import peak_rss; print(peak_rss())"
    child = int(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert child < 400 * 2 ** 20, child / 2 ** 20
    assert big[0] == 2.0
