"""Drawing figures in a child process: :class:`FigureWorker` (the parent's side of ``python -m twin.figures``)."""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path

from plant_models.errors import BioimpError
from twin.figures import FigureSpec

__all__ = ["FigureError", "FigureWorker"]


class FigureError(BioimpError, RuntimeError):
    """The figure worker failed or went away (the message names the figure and holds its error)."""


class _Worker:
    """One ``python -m twin.figures`` child, fed by a thread so a submission never waits for the child."""

    def __init__(self, nice: int) -> None:
        # The child imports the same twin package as this process, wherever it is run from.
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        argv = [sys.executable, "-m", "twin.figures", *(["--nice", str(nice)] if nice else [])]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.pending: list[Path] = []
        self._jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="figure-feeder", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        alive = True
        while (data := self._jobs.get()) is not None:
            if alive:
                try:
                    stdin.write(data)
                    stdin.flush()
                except OSError:  # the child exited: close() reports it
                    alive = False
        with contextlib.suppress(OSError):
            stdin.close()

    def send(self, path: Path, data: bytes) -> None:
        self.pending.append(path)
        self._jobs.put(data)

    def close(self) -> list[tuple[Path, str]]:
        """Wait for the child to draw everything sent; each figure with ``ok`` or its error."""
        assert self.proc.stdout is not None
        self._jobs.put(None)
        self._feeder.join()
        replies = self.proc.stdout.read().decode(errors="replace").splitlines()
        code = self.proc.wait()
        missing = f"the figure worker exited (code {code})"
        return [(path, replies[i] if i < len(replies) else missing) for i, path in enumerate(self.pending)]


class FigureWorker:
    """Child processes that draw figures while this one goes on; a context manager.

    Started on entry (each imports matplotlib at once). :meth:`submit` hands a figure to the child with
    the fewest queued and returns at once. :meth:`finish` (or leaving the block) waits until every figure
    is written and raises :class:`FigureError` for the first that failed. The children only read pickles
    from their stdin and write PNGs; they never touch the record or the plant.
    """

    def __init__(self, processes: int = 1, *, nice: int = 0) -> None:
        """Args: processes: how many children (figures drawn at once); nice: their niceness increment
        (a worker started long before its figures should not slow what runs meanwhile)."""
        self._processes = processes
        self._nice = nice
        self._workers: list[_Worker] = []

    def __enter__(self) -> FigureWorker:
        """Start the children."""
        self._workers = [_Worker(self._nice) for _ in range(self._processes)]
        return self

    def submit(self, path: Path, spec: FigureSpec) -> None:
        """Queue ``spec`` to be drawn to ``path`` by the least busy child (returns at once)."""
        assert self._workers, "use FigureWorker as a context manager"
        min(self._workers, key=lambda w: len(w.pending)).send(path, pickle.dumps((path, spec), pickle.HIGHEST_PROTOCOL))

    def finish(self) -> None:
        """Wait for every queued figure and stop the children (no more submissions after this).

        Raises:
            FigureError: the first figure that failed (named, with its error).
        """
        workers, self._workers = self._workers, []
        results = [result for worker in workers for result in worker.close()]
        for path, reply in results:
            if reply != "ok":
                raise FigureError(f"{path}: {reply}")

    def __exit__(self, *exc: object) -> None:
        """:meth:`finish` (if not done yet); when the block already failed, only stop the children."""
        if exc[0] is None:
            self.finish()
        else:  # do not hide that error behind ours
            with contextlib.suppress(FigureError):
                self.finish()
