"""Figures do not depend on the machine's load: matplotlib warns when placing a legend with
loc="best" takes over a second, and under load that warning (an error in the tests) made a
command fail at random. save_figure draws without it; the test forces the slow path."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.legend
import matplotlib.pyplot as plt

from basinscope.plotting.io import save_figure


def test_a_slow_best_legend_placement_is_not_a_warning(tmp_path, monkeypatch):
    clock = iter(range(0, 10**6, 10))  # every reading of the clock 10 s after the last
    monkeypatch.setattr(matplotlib.legend.time, "perf_counter", lambda: next(clock))
    fig, ax = plt.subplots()
    ax.plot(range(100), label="a")
    ax.plot(range(100, 0, -1), label="b")
    ax.legend()  # loc="best": matplotlib times its search
    written = save_figure(fig, tmp_path / "f", ["png"])
    assert written[0].stat().st_size > 0
    plt.close(fig)
