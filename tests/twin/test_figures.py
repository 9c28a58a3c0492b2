"""Figures as data, drawn in a child process (twin.figure_worker) or here (twin.figures.render)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twin.figure_worker import FigureError, FigureWorker
from twin.figures import Band, FigureSpec, Panel, Series, render

ORANGE = (0xFF, 0x7F, 0x0E)  # tab:orange
BROWN = (0x8C, 0x56, 0x4B)  # tab:brown
BLUE = (0x1F, 0x77, 0xB4)  # tab:blue


def pixels_of(path: Path, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    """Boolean image: where the PNG is within ``tol`` of ``colour`` in every channel."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    return np.all(np.abs(rgb - np.array(colour)) <= tol, axis=-1)


def two_panels(title: str) -> FigureSpec:
    t = np.linspace(0.0, 10.0, 500)
    upper = Panel(
        "x\n[g/L]",
        (
            Series(t, np.sin(t), "tab:blue", "x estimate"),
            Band(t, np.sin(t) - 0.2, np.sin(t) + 0.2, "tab:blue"),
            Series(t, np.sin(t) + 0.05, "tab:blue", "x true", "dashed", 0.8),
            Series(t[::50], np.sin(t[::50]), "tab:blue", "x assay", "dots", 3.5),
        ),
        legend=True,
    )
    right = Panel("P [W]", (Series(t, 5 + np.cos(t), "tab:brown", style="step", width=1.0),), ylabel_colour="tab:brown")
    lower = Panel("F [L/h]", (Series(t, (t > 5).astype(float), "tab:orange", style="step"),), "tab:orange", right=right)
    return FigureSpec(title, "time [h]", (upper, lower), width_in=6.0, panel_height_in=2.0, extra_height_in=0.8, dpi=50)


def test_the_workers_draw_every_submitted_figure(tmp_path: Path) -> None:
    with FigureWorker(processes=2) as figures:
        figures.submit(tmp_path / "a.png", two_panels("a"))
        figures.submit(tmp_path / "b.png", two_panels("b"))
    for name in ("a.png", "b.png"):
        image = Image.open(tmp_path / name)
        assert image.size == (300, 240)  # (6 in, 2 * 2 + 0.8 in) at 50 dpi
        # Both axes of the lower panel are drawn: the feed (left) and the heater power (right axis).
        assert pixels_of(tmp_path / name, ORANGE).sum() > 50
        assert pixels_of(tmp_path / name, BROWN).sum() > 50


def test_a_figure_that_cannot_be_drawn_is_named_and_the_others_are_written(tmp_path: Path) -> None:
    broken = FigureSpec(
        "broken", "t", (Panel("y", (Series(np.zeros(3), np.zeros(2), "tab:blue"),)),), 4.0, 2.0, 0.8, 50
    )
    with pytest.raises(FigureError, match=r"bad\.png: ValueError: .*same first dimension"), FigureWorker() as figures:
        figures.submit(tmp_path / "good.png", two_panels("good"))
        figures.submit(tmp_path / "bad.png", broken)
    assert (tmp_path / "good.png").stat().st_size > 1000
    assert not (tmp_path / "bad.png").exists()


def test_a_one_sample_spike_in_a_long_series_stays_visible(tmp_path: Path) -> None:
    # 20 000 points on a 400-pixel axis: a single sample at 1.0 among zeros must still reach the top.
    t = np.arange(20_000, dtype=float)
    y = np.zeros_like(t)
    y[12_345] = 1.0
    panel = Panel("y", (Series(t, y, "tab:blue"),))
    spec = FigureSpec("spike", "t", (panel,), 5.0, 3.0, 0.0, 100, margins_in=(0.5, 0.5, 0.5, 0.5))
    render(tmp_path / "spike.png", spec)
    blue = pixels_of(tmp_path / "spike.png", BLUE, tol=60)
    rows = np.nonzero(blue.any(axis=1))[0]
    # Axes span rows 50..250 (0.5 in margins at 100 dpi); the data's top (1.0) sits just under row 60.
    assert rows.min() < 70, rows.min()
    column = np.nonzero(blue[rows.min()])[0]
    # The spike is drawn where its sample is: 12 345 / 20 000 of the axes' width (plus margins, 5 % padding).
    expected = 50 + 400 * (0.05 + 0.9 * 12_345 / 19_999)
    assert abs(column.mean() - expected) < 4, (column, expected)
