"""The sweep's live progress bar (rich): cases done, failures, rate and ETA; silent when not a terminal."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["SweepProgress"]


class _RateColumn(ProgressColumn):
    """Cases per second over rich's recent window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- cases/s" if speed is None else f"{speed:.2f} cases/s", style="progress.data.speed")


class SweepProgress:
    """A progress bar over the cases of one run (cases already done count from the start).

    Used as a context manager; ``console`` defaults to stdout, and the bar is disabled when that is not a
    terminal (a log file or a pipe gets no control characters).
    """

    def __init__(self, total: int, already_done: int, console: Console | None = None) -> None:
        """Args:
        total: cases in the sweep.
        already_done: cases finished by an earlier run (resume).
        console: where to draw (stdout by default).
        """
        console = console or Console()
        self._progress = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task("sweep", total=total, completed=already_done, failed=0)
        self.failed = 0

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def advance(self, ok: bool) -> None:
        """One more case finished (``ok`` False: it failed)."""
        if not ok:
            self.failed += 1
        self._progress.update(self._task, advance=1, failed=self.failed)
