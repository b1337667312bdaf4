"""Small matplotlib helpers shared by both wings' reports, in one house style.

Conventions, so that every figure reads alike:

- Axis labels say "quantity (unit)": "flash (MiB)", "mean TPOT (ms)", "write amplification (x)", "miss ratio
  (0-1)", "hit rate (%)". A count is its own unit ("requests", "experts per layer"). Blank labels are refused.
- Numbers are written plainly, never in scientific notation: 1.5M not 1.5e6, 10k not 10^4, on linear and log axes.
- A log axis labels its decades (1, 10, 100, 1k, ...), or 1-2-5 steps when it spans little, or even steps when
  it spans less than one such step; its minor ticks carry no labels.
- Labels never overlap: few ticks (MaxNLocator), bar charts turn horizontal with wrapped labels when the names
  would not fit side by side, legends with many or long entries go beside the axes, layout is constrained.
- A line plot can shade its steady-state window, so a metric over time shows where the steady figures come from.

`line_figure` / `bar_figure` build a Figure (the tests measure it); `line_plot` / `bar_plot` also save it as PNG.
`figure`, `readable_ticks` and `save` give custom plots the same look.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

WIDTH, HEIGHT, DPI = 6.4, 4.0, 150  # inches; a report column wide, sharp on a laptop screen
TITLE_PT, LABEL_PT, TICK_PT, NOTE_PT = 10, 9, 8, 7
PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")  # Tol's colour-blind safe
MAX_TICKS = 6  # intervals per axis at most: short plain labels then fit side by side
ROUND_STEPS = (1, 2, 2.5, 5, 10)  # tick steps (x a power of ten) that read as round numbers: 50k not 60k, 90k
STEADY_LABEL = "steady window"
Steady = float | tuple[float, float]  # the window's start, or (start, end), in x data units


def figure(ncols: int = 1, *, width: float = WIDTH, height: float = HEIGHT,
           sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure of `ncols` side-by-side axes in the house style (size, dpi, fonts, grid, colours)."""
    # the object API, not pyplot: no global figure registry to leak into when a plot fails half way
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer for savefig and for measuring text extents
    axes = list(fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0])
    for ax in axes:
        ax.set_prop_cycle(color=PALETTE)
        ax.tick_params(labelsize=TICK_PT)
        ax.xaxis.label.set_size(LABEL_PT)  # set_xlabel keeps the size, so custom plots get it too
        ax.yaxis.label.set_size(LABEL_PT)
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG at `path` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def human(value: float, digits: int = 3) -> str:
    """`value` written plainly with at most `digits` significant digits: 1.5M, 250k, 10, 0.25, 0.00001."""
    # rounded before the suffix is chosen, so 999,999 reads 1M, not 1000k; + 0.0 turns a -0 tick into 0
    value = float(_positional(value, digits)) + 0.0
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return _positional(value / scale, digits) + suffix
    return _positional(value, digits)


def _positional(value: float, digits: int) -> str:
    # never e-notation, whatever the magnitude
    return np.format_float_positional(value, precision=digits, unique=True, fractional=False, trim="-")


def readable_ticks(axis: Axis, *, integral: bool = False) -> None:
    """Few major ticks with plain labels; on a log axis, unlabelled minor ticks. Call it once the data is drawn:
    a log axis picks its ticks from the range it shows."""
    if axis.get_scale() == "log":
        lo, hi = sorted(axis.get_view_interval())
        axis.set_major_locator(_log_locator(lo, hi))
        axis.set_minor_locator(LogLocator(subs="auto"))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(nbins=MAX_TICKS, steps=ROUND_STEPS, integer=integral))
    # a fourth digit keeps neighbouring ticks such as 10.25M and 10.5M apart
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: human(value, 4)))


def line_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
    steady: Steady | None = None,
) -> Figure:
    """One line per named (x, y) series; `steady` shades the steady-state window (see `line_plot`)."""
    fig, (ax,) = figure()
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o" if markers else None, markersize=3, linewidth=1.4, label=name)
    if steady is not None:
        _shade_steady(ax, steady, last_x=max((v for x, _ in series.values() for v in x), default=None))
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    integral_x = all(float(v).is_integer() for x, _ in series.values() for v in x)
    readable_ticks(ax.xaxis, integral=integral_x)
    readable_ticks(ax.yaxis)
    _label(ax, title, _required(xlabel, "xlabel"), _required(ylabel, "ylabel"))
    _legend(ax)
    return fig


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
    steady: Steady | None = None,
) -> Path:
    """One figure with one line per named (x, y) series, saved as PNG at `path`.

    Labels follow "quantity (unit)" (module docstring). `steady` is where the steady-state window starts in x
    units, or its (start, end); it is shaded and named "steady window" in the legend (no end: the last sample).
    """
    return save(line_figure(series, title=title, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy,
                            markers=markers, steady=steady), path)


def bar_figure(values: Mapping[str, float], *, title: str, ylabel: str, logy: bool = False) -> Figure:
    """One bar per named value, each labelled with its value; horizontal when the names would not fit below."""
    names = list(values)
    horizontal = _too_wide(names)
    wrapped = [_wrap(n, 28) if horizontal else n for n in names]
    lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    # horizontal bars get a row of text each, so the figure grows with their count
    fig, (ax,) = figure(height=max(HEIGHT, 1.2 + len(names) * (0.16 * lines + 0.12)) if horizontal else HEIGHT)
    heights = [values[n] for n in names]
    bars = (ax.barh if horizontal else ax.bar)(wrapped, heights, color=PALETTE[0])
    ax.bar_label(bars, labels=[human(v) for v in heights], fontsize=NOTE_PT, padding=2)
    value_axis, category_axis = (ax.xaxis, ax.yaxis) if horizontal else (ax.yaxis, ax.xaxis)
    if horizontal:
        ax.invert_yaxis()  # first name on top, as it reads
        ax.set_xscale("log" if logy else "linear")
    else:
        ax.set_yscale("log" if logy else "linear")
    ax.margins(**{"x" if horizontal else "y": 0.12})  # room for the value labels past the longest bar
    readable_ticks(value_axis)
    category_axis.grid(False)
    ylabel = _required(ylabel, "ylabel")
    _label(ax, title, *((ylabel, "") if horizontal else ("", ylabel)))
    return fig


def bar_plot(
    values: Mapping[str, float],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    logy: bool = False,
) -> Path:
    """A bar chart of named values, saved as PNG at `path`; `ylabel` names the values, "quantity (unit)"."""
    return save(bar_figure(values, title=title, ylabel=ylabel, logy=logy), path)


# --- pieces ------------------------------------------------------------------------------------------------------


def _shade_steady(ax: Axes, steady: Steady, last_x: float | None) -> None:
    # an open window ends at the last sample (or is a line where the run warmed after it)
    start, end = steady if isinstance(steady, tuple) else (steady, max(steady, last_x or steady))
    ax.axvspan(start, end, color="0.55", alpha=0.15, linewidth=0, zorder=0, label=STEADY_LABEL)


def _log_locator(lo: float, hi: float) -> Locator:
    """Decades, else 1-2-5 steps, else even steps: the first that labels at least three ticks between lo and hi
    (a log axis spanning less than a decade would otherwise show one label or none)."""
    for locator in (LogLocator(), LogLocator(subs=(1.0, 2.0, 5.0))):
        if sum(lo <= t <= hi for t in locator.tick_values(lo, hi)) >= 3:
            return locator
    return MaxNLocator(nbins=MAX_TICKS, steps=ROUND_STEPS)


def _required(label: str, what: str) -> str:
    """`label`, refused when blank: every value axis says what it shows and in which unit."""
    if not label.strip():
        raise ValueError(f"{what} is blank: give the axis a 'quantity (unit)' label, e.g. 'flash (MiB)'")
    return label


def _label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(_wrap(title, 80), fontsize=TITLE_PT)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _legend(ax: Axes) -> None:
    """A legend when there is more than one entry: inside when short, else beside the axes in one column."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) < 2:
        return
    if len(labels) > 4 or max(map(len, labels)) > 20:
        ax.legend(fontsize=TICK_PT, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
    else:
        ax.legend(fontsize=TICK_PT, loc="best")


def _too_wide(names: Sequence[str]) -> bool:
    """Would the names, side by side under vertical bars, need more room than the axes' width gives them?"""
    # ~100 characters of tick font fit across the axes; each name needs its longest line plus a gap, and the
    # budget keeps a margin for wide letters
    return sum(max(map(len, n.splitlines()), default=0) + 2 for n in names) > 80


def _wrap(text: str, width: int) -> str:
    """Each line of `text` wrapped at `width` characters (the line breaks a caller put are kept)."""
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())
