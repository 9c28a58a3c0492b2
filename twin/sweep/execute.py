"""Where the cases run: a local process pool, or a Dask cluster. Both behind one small seam.

A :class:`CaseRunner` takes the pending cases and yields each case's row as it finishes, in any
order. The row does not depend on the runner (each case is a pure function of its scenario text), so
the same sweep gives the same table on one core, on all cores or on a cluster.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from types import TracebackType
from typing import Any, Protocol

from twin.sweep.cases import Case
from twin.sweep.worker import CaseContext, run_case

__all__ = ["CaseRunner", "DaskRunner", "LocalPoolRunner", "default_workers"]

Outcome = tuple[Case, dict[str, Any] | BaseException]


class CaseRunner(Protocol):
    """Runs cases somewhere; yields ``(case, row)`` as each finishes (an exception if the runner lost it)."""

    def run(self, cases: Sequence[Case], context: CaseContext) -> Iterator[Outcome]:
        """Submit every case and yield outcomes as they finish; closing the iterator cancels the rest."""
        ...

    def close(self) -> None:
        """Release processes and connections."""
        ...

    def __enter__(self) -> CaseRunner: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def default_workers() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker_init() -> None:
    # Ctrl-C is the parent's to handle: it cancels what has not started and writes a consistent DIR.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # If the sweep itself is killed (kill -9), its workers go too instead of finishing their case as
    # orphans (Linux: PR_SET_PDEATHSIG; elsewhere they notice the broken pipe after the case).
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl: do not outlive it
            os._exit(1)


class LocalPoolRunner:
    """``workers`` processes on this machine (spawned: no forked solver or thread state)."""

    def __init__(self, workers: int) -> None:
        """Args:
        workers: number of worker processes (>= 1).
        """
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
        )

    def run(self, cases: Sequence[Case], context: CaseContext) -> Iterator[Outcome]:
        """Submit every case; yield rows as they finish."""
        futures: dict[Future[dict[str, Any]], Case] = {self._pool.submit(run_case, c, context): c for c in cases}
        try:
            for future in as_completed(futures):
                exc = future.exception()
                yield futures[future], exc if exc is not None else future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        """Stop the workers (cases not started are cancelled)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalPoolRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class DaskRunner:
    """The cases on a Dask distributed cluster (``tcp://host:port`` of its scheduler)."""

    def __init__(self, address: str) -> None:
        """Connect to the scheduler.

        Raises:
            ScenarioError: no scheduler answers at ``address``.
        """
        from distributed import Client

        from plant_models.errors import ScenarioError

        try:
            self._client = Client(address, timeout="5s")
        except OSError as exc:
            raise ScenarioError(f"--scheduler: cannot connect to {address}: {exc}") from None
        self.address = address

    def run(self, cases: Sequence[Case], context: CaseContext) -> Iterator[Outcome]:
        """Submit every case (one task each, keyed by the case) and yield rows as they finish."""
        from distributed import as_completed as dask_completed

        futures = {self._client.submit(run_case, c, context, key=f"bioimp-case-{c.key}", pure=False): c for c in cases}
        try:
            for future in dask_completed(list(futures)):
                if future.status == "error":
                    yield futures[future], future.exception()
                else:
                    yield futures[future], future.result()
        finally:
            self._client.cancel(list(futures))

    def close(self) -> None:
        """Disconnect (the cluster keeps running)."""
        self._client.close()

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
