"""Drawing figures in a child process: :class:`FigureWorker` (the parent's side of ``python -m twin.figures``)."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

from plant_models.errors import BioimpError
from twin.figures import FigureSpec

__all__ = ["FigureError", "FigureWorker"]


class FigureError(BioimpError, RuntimeError):
    """The figure worker failed or went away (the message names the figure and holds its error)."""


class FigureWorker:
    """A child process that draws figures while this one goes on; a context manager.

    Started on entry (it imports matplotlib at once); :meth:`submit` queues a figure; leaving the block
    waits until every figure is written and raises :class:`FigureError` if one failed. The child only
    reads pickles from its stdin and writes PNGs; it never touches the record or the plant.
    """

    def __init__(self) -> None:
        """Start nothing yet (see ``__enter__``)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: list[Path] = []

    def __enter__(self) -> FigureWorker:
        """Start the child process."""
        # The child imports the same twin package as this process, wherever it is run from.
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "twin.figures"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        return self

    def submit(self, path: Path, spec: FigureSpec) -> None:
        """Queue ``spec`` to be drawn to ``path``.

        Returns once the pipe has taken the pickle: at once for a small figure, after the child's current
        figure for one larger than the pipe's buffer (the child reads the next figure when it is free).
        """
        assert self._proc is not None and self._proc.stdin is not None, "use FigureWorker as a context manager"
        try:
            pickle.dump((path, spec), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise FigureError(f"{path}: the figure worker exited (code {self._proc.wait()})") from None
        self._pending.append(path)

    def __exit__(self, *exc: object) -> None:
        """Wait for every queued figure; raise :class:`FigureError` for the first one that failed."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):  # the child already exited: its replies say why
            proc.stdin.close()
        replies = proc.stdout.read().decode(errors="replace").splitlines()
        code = proc.wait()
        if exc[0] is not None:  # already failing: do not hide that error behind ours
            return
        for i, path in enumerate(self._pending):
            reply = replies[i] if i < len(replies) else f"the figure worker exited (code {code})"
            if reply != "ok":
                raise FigureError(f"{path}: {reply}")
