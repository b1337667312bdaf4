"""The plot helpers measured with matplotlib itself: tick labels never overlap nor leave the figure, log axes read
as plain numbers, the steady window is drawn where asked, every value axis is labelled."""

from __future__ import annotations

from itertools import combinations

import pytest
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from tierwise.common.plots import (STEADY_LABEL, bar_figure, bar_plot, figure, human, line_figure, line_plot,
                                   save)

REQUESTS = list(range(200_000, 2_000_001, 200_000))
# windowed ALWA of five designs settling towards their steady values (the nemo bench's wa_over_time.png)
WA = {name: (REQUESTS, [steady * (1 + 2 / (i + 1)) for i in range(len(REQUESTS))])
      for name, steady in (("nemo", 1.6), ("log", 1.1), ("set", 16.3), ("kangaroo", 55.6), ("fairywren", 15.2))}


def tick_labels(axis: Axis) -> list:
    """The major tick labels drawn: visible, non-blank, at a tick inside the view (matplotlib keeps labelled
    ticks just outside it, never drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    return [t for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if lo <= loc <= hi and t.get_visible() and t.get_text()]


def assert_readable(fig: Figure) -> None:
    """On every axis: no two tick labels intersect, and they and the legend lie wholly inside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in tick_labels(axis)]
            for (a, box_a), (b, box_b) in combinations(boxes, 2):
                assert not box_a.overlaps(box_b), f"tick labels {a!r} and {b!r} overlap"
            for text, box in boxes:
                assert inside(box, fig), f"tick label {text!r} is cut off by the figure's edge"
        if ax.get_legend():
            assert inside(ax.get_legend().get_window_extent(renderer), fig), "the legend is cut off"


def inside(box: Bbox, fig: Figure) -> bool:
    page = fig.bbox
    return page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1


def assert_plain(axis: Axis) -> list[str]:
    """The axis' labels are plain numbers (no 10^x, no mathtext, no e-notation); minor ticks have none."""
    texts = [t.get_text() for t in tick_labels(axis)]
    assert len(texts) >= 3, texts
    assert not any("$" in t or "^" in t or "e" in t for t in texts), texts
    assert not any(t.get_text() for t in axis.get_minorticklabels())
    return texts


def steady_span(fig: Figure) -> tuple[float, float]:
    """The x range of the shaded steady window, checked to be named in the legend."""
    (ax,) = fig.axes
    (span,) = [p for p in ax.patches if p.get_label() == STEADY_LABEL]
    assert STEADY_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    box = span.get_window_extent().transformed(ax.transData.inverted())
    return box.x0, box.x1


def test_wa_over_time_shades_the_steady_window_to_the_last_sample(tmp_path):
    fig = line_figure(WA, title="Write amplification over time (windowed ALWA)", xlabel="requests",
                      ylabel="write amplification (x)", logy=True, steady=800_000)
    assert save(fig, tmp_path / "wa.png").stat().st_size > 0
    assert_readable(fig)
    assert steady_span(fig) == pytest.approx((800_000, REQUESTS[-1]), rel=1e-3)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "requests" and ax.get_ylabel() == "write amplification (x)"
    assert {"2", "10", "100"} <= set(assert_plain(ax.yaxis))  # two decades: 1-2-5 steps
    assert [t.get_text() for t in tick_labels(ax.xaxis)] == ["500k", "1M", "1.5M", "2M"]  # not 1.5e6, no offset


def test_a_steady_window_with_an_end_and_a_log_axis_inside_one_decade(tmp_path):
    fig = line_figure({"nemo": (REQUESTS, [1.2 + 0.06 * i for i in range(len(REQUESTS))])}, title="ALWA",
                      xlabel="requests", ylabel="write amplification (x)", logy=True, steady=(400_000, 1_600_000))
    save(fig, tmp_path / "narrow.png")
    assert_readable(fig)
    assert steady_span(fig) == pytest.approx((400_000, 1_600_000), rel=1e-3)
    assert_plain(fig.axes[0].yaxis)  # no decade in view: still three or more plain labels


def test_log_log_axes_label_decades_plainly(tmp_path):
    decades = [10.0**k for k in range(7)]
    fig = line_figure({"curve": (decades, [d / 1000 for d in decades])}, title="Miss ratio", xlabel="flash (MiB)",
                      ylabel="miss ratio (0-1)", logx=True, logy=True)
    save(fig, tmp_path / "loglog.png")
    assert_readable(fig)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "flash (MiB)" and ax.get_ylabel() == "miss ratio (0-1)"
    assert {"1", "10", "100", "1k", "10k", "1M"} <= set(assert_plain(ax.xaxis))
    assert {"0.001", "0.01", "0.1", "1"} <= set(assert_plain(ax.yaxis))
    assert ax.get_legend() is None  # one series: nothing to tell apart


def test_integral_x_gets_integral_ticks():
    fig = line_figure({"reuse": (list(range(1, 33)), [1 / h for h in range(1, 33)])}, title="Expert reuse",
                      xlabel="horizon h (previous tokens)", ylabel="experts reused (%)")
    assert all(t.get_text().isdigit() for t in tick_labels(fig.axes[0].xaxis))


def test_many_long_bar_names_turn_the_chart_horizontal(tmp_path):
    names = [f"nemo with flush threshold P and hot window 0.{i} (run {i})" for i in range(14)]
    fig = bar_figure({n: 10.0**(i / 2) for i, n in enumerate(names)}, title="SG fill by configuration",
                     ylabel="mean SG fill (%)")
    save(fig, tmp_path / "bars.png")
    assert_readable(fig)
    (ax,) = fig.axes
    assert [t.get_text().replace("\n", " ") for t in tick_labels(ax.yaxis)] == names  # first on top, wrapped
    assert ax.get_xlabel() == "mean SG fill (%)"
    assert not any("e+" in t.get_text() for t in tick_labels(ax.xaxis))


def test_a_few_short_bar_names_stay_vertical(tmp_path):
    fill = {"naive": 6.8, "+buffered SGs": 31.3, "+delayed flush": 36.8, "+both": 64.1, "+write-back": 89.3}
    fig = bar_figure(fill, title="Nemo SG fill rate by technique", ylabel="mean SG fill (%)")
    save(fig, tmp_path / "fill.png")
    assert_readable(fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in tick_labels(ax.xaxis)] == list(fill) and ax.get_ylabel() == "mean SG fill (%)"


def test_a_custom_figure_gets_the_house_look(tmp_path):
    fig, axes = figure(ncols=2, width=11, sharey=True)
    for ax in axes:
        ax.scatter([0, 1], [2, 3])
        ax.set_xlabel("routing entropy change (%)")
    assert len(axes) == 2 and axes[0].xaxis.label.get_size() == axes[1].xaxis.label.get_size()
    assert save(fig, tmp_path / "sub" / "pareto.png").is_file()
    assert_readable(fig)


def test_the_plot_functions_keep_their_call_and_write_pngs(tmp_path):
    lines = line_plot({"a": ([1, 2], [3, 4])}, tmp_path / "a" / "line.png", title="t", xlabel="requests",
                      ylabel="miss ratio (0-1)", logx=True, logy=True, markers=False)
    bars = bar_plot({"a": 1.0, "b": 2.0}, tmp_path / "bar.png", title="t", ylabel="mean TPOT (ms)", logy=True)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in (lines, bars))


@pytest.mark.parametrize("value,text", [(1_500_000, "1.5M"), (250_000, "250k"), (2e9, "2G"), (10, "10"),
                                        (0.25, "0.25"), (0, "0"), (-0.0, "0"), (-3000, "-3k"), (8.7234, "8.72"),
                                        (999_999, "1M"), (1e-5, "0.00001"), (0.1 + 0.2, "0.3")])
def test_human_numbers(value, text):
    assert human(value) == text


def test_a_blank_axis_label_is_refused():
    with pytest.raises(ValueError, match="ylabel is blank"):
        line_figure({"a": ([1, 2], [1, 2])}, title="t", xlabel="requests", ylabel=" ")
    with pytest.raises(ValueError, match="ylabel is blank"):
        bar_figure({"a": 1.0}, title="t", ylabel="")
