"""Run outputs are valid files for any reader: summary.json never holds NaN or Infinity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from twin.outputs import write_summary


def test_summary_json_writes_non_finite_numbers_as_null(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_summary(path, {"final_states": {"Xv": math.nan, "V": np.float64(1.2)}, "p99": [1.0, math.inf]})

    def refuse(token: str) -> float:
        raise AssertionError(f"{token} is not JSON")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == {"final_states": {"Xv": None, "V": 1.2}, "p99": [1.0, None]}
