"""Stacked time-series figures as plain data, drawn to PNG here or in a separate worker process.

A run directory's figures (:mod:`twin.outputs`' trajectory.png, :mod:`twin.batch_figure`'s batch.png)
are described as a :class:`FigureSpec` (numpy arrays and strings, nothing of the model or the record)
and drawn by :func:`render`. The description is cheap to build and to pickle; the drawing is where the
time goes (matplotlib's import alone is most of a second), so ``bioimp run`` hands it to
:class:`twin.figure_worker.FigureWorker`: child processes (``python -m twin.figures``, :func:`serve`)
started with the batch, which import matplotlib and warm it up while the loop runs, then draw one
figure each, at once, when it has ended. This module imports only numpy, so a child starts quickly.

Drawing is kept cheap: matplotlib's object API on the Agg canvas (no pyplot, no GUI backend), and fixed
margins in inches instead of ``tight_layout``, which draws every tick label once more only to measure it.
Lines keep all their points: Agg's path simplification already merges what one pixel cannot show, and
keeps the spikes.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Band", "FigureSpec", "Panel", "Series", "render", "serve"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Series:
    """One line or set of markers in a panel.

    Attributes:
        t: abscissa (already in the figure's time unit).
        y: values, same length.
        colour: a matplotlib colour name.
        label: legend entry (None: not in the legend).
        style: ``line``, ``dashed``, ``step`` (held from each point to the next) or ``dots``.
        width: line width (points); marker size for ``dots``.
    """

    t: FloatArray
    y: FloatArray
    colour: str
    label: str | None = None
    style: Literal["line", "dashed", "step", "dots"] = "line"
    width: float = 1.5


@dataclass(frozen=True)
class Band:
    """A shaded band between ``lo`` and ``hi`` (an estimate's ±2σ)."""

    t: FloatArray
    lo: FloatArray
    hi: FloatArray
    colour: str
    alpha: float = 0.2


@dataclass(frozen=True)
class Panel:
    """One axes of the stack: items drawn in order, a y label and, optionally, a second y axis.

    Attributes:
        ylabel: the y axis label.
        items: lines, markers and bands, drawn in this order (the legend follows it).
        legend: draw a legend (small, two columns, placed where it hides least).
        ylabel_colour: colour of the y label (None: the default).
        right: series on a second y axis on the right (its own label and colour), or None.
    """

    ylabel: str
    items: tuple[Series | Band, ...]
    legend: bool = False
    ylabel_colour: str | None = None
    right: Panel | None = None


@dataclass(frozen=True)
class FigureSpec:
    """A stack of panels sharing the time axis.

    Attributes:
        title: the figure title.
        xlabel: the time axis label (bottom panel).
        panels: top to bottom.
        width_in: figure width (inches).
        panel_height_in: height per panel (inches); the figure is ``len(panels) * panel_height_in + extra``.
        extra_height_in: room for the title and the time axis (inches).
        dpi: pixels per inch of the PNG.
        margins_in: left, right, top, bottom margins (inches): room for the tick and axis labels.
        gap_in: vertical gap between panels (inches).
    """

    title: str
    xlabel: str
    panels: tuple[Panel, ...]
    width_in: float
    panel_height_in: float
    extra_height_in: float
    dpi: int
    margins_in: tuple[float, float, float, float] = (1.05, 0.2, 0.45, 0.5)
    gap_in: float = 0.25


def _draw_items(ax: Axes, items: Sequence[Series | Band]) -> None:
    for item in items:
        if isinstance(item, Band):
            ax.fill_between(item.t, item.lo, item.hi, color=item.colour, alpha=item.alpha, lw=0)
        elif item.style == "dots":
            ax.plot(item.t, item.y, "o", color=item.colour, ms=item.width, label=item.label)
        else:  # a step holds each value until the next point, as the plant held the input
            ax.plot(
                item.t,
                item.y,
                color=item.colour,
                lw=item.width,
                label=item.label,
                ls="--" if item.style == "dashed" else "-",
                drawstyle="steps-post" if item.style == "step" else "default",
            )


def _label(ax: Axes, panel: Panel) -> None:
    if panel.ylabel_colour is None:
        ax.set_ylabel(panel.ylabel)
    else:
        ax.set_ylabel(panel.ylabel, color=panel.ylabel_colour)


def render(path: Path | IO[bytes], spec: FigureSpec) -> None:
    """Draw ``spec`` and save it as a PNG at ``path`` (a file name or a binary file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(spec.panels)
    height = n * spec.panel_height_in + spec.extra_height_in
    fig = Figure(figsize=(spec.width_in, height))
    FigureCanvasAgg(fig)
    left, right, top, bottom = spec.margins_in
    axes_height = (height - top - bottom - (n - 1) * spec.gap_in) / n
    fig.subplots_adjust(
        left=left / spec.width_in,
        right=1.0 - right / spec.width_in,
        top=1.0 - top / height,
        bottom=bottom / height,
        hspace=spec.gap_in / axes_height,
    )
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    for ax, panel in zip(axes, spec.panels, strict=True):
        _draw_items(ax, panel.items)
        _label(ax, panel)
        if panel.right is not None:
            twin = ax.twinx()
            _draw_items(twin, panel.right.items)
            _label(twin, panel.right)
        ax.grid(alpha=0.3)
        if panel.legend:
            ax.legend(fontsize=7, loc="best", ncol=2)
    axes[-1].set_xlabel(spec.xlabel)
    fig.suptitle(spec.title, y=1.0 - 0.12 / height, va="top")
    fig.savefig(path, dpi=spec.dpi)


def _warm_up() -> None:
    t = np.linspace(0.0, 1.0, 50)
    panel = Panel(
        "x\n[g/L]",
        (Series(t, t, "tab:blue", "x"), Band(t, t, t + 1.0, "tab:blue"), Series(t, t, "tab:blue", "x", "dots")),
        legend=True,
        right=Panel("u", (Series(t, t, "tab:brown", style="step"),), ylabel_colour="tab:brown"),
    )
    render(io.BytesIO(), FigureSpec("±2σ", "time [h]", (panel,), 2.0, 1.0, 0.5, 30))


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The worker's loop: ``(path, spec)`` pickles in, one ``ok``/error line out per figure, until EOF.

    Before waiting for the first figure it draws a tiny one into memory: matplotlib's import and its
    first-use costs (fonts, text layout, the PNG encoder) are paid while the parent is still busy.
    """
    _warm_up()
    while True:
        try:
            path, spec = pickle.load(stdin)
        except EOFError:
            return
        try:
            render(path, spec)
            reply = "ok"
        except Exception as exc:  # reported to the parent (twin.figure_worker), which raises it
            reply = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        stdout.write(reply.encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--nice"]:  # a worker started long before its figures yields the CPU meanwhile
        import os

        os.nice(int(sys.argv[2]))
    # Through the module, not this __main__ copy: the pickles name twin.figures' classes.
    from twin.figures import serve as _serve_module

    _serve_module(sys.stdin.buffer, sys.stdout.buffer)
