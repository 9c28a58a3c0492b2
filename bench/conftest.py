"""Shared helpers for the benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np


def percentiles_ms(benchmark: Any) -> dict[str, float]:
    """p50 and p99 in milliseconds of a finished benchmark's raw rounds, stored in ``extra_info``."""
    data = np.asarray(benchmark.stats.stats.data) * 1e3
    figures = {"p50_ms": float(np.percentile(data, 50)), "p99_ms": float(np.percentile(data, 99))}
    benchmark.extra_info.update(figures)
    return figures
