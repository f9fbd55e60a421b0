"""Shared fixtures: the real CT data beside the checkout (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.paths import DEFAULT_WEIGHTS, shared_data_dir
from model.scoring.inference import BodyPartRegressor


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "manifest.csv").exists():
        pytest.skip(f"real CT data not found at {path} (set BPR_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def regressor() -> BodyPartRegressor:
    """The shipped model (or ``$BPR_TEST_WEIGHTS``) with the statistics analysis needs."""
    weights = Path(os.environ.get("BPR_TEST_WEIGHTS", str(DEFAULT_WEIGHTS)))
    if not weights.exists():
        pytest.skip(f"no model weights at {weights}")
    reg = BodyPartRegressor.load(weights)
    missing = [k for k in ("slope_per_mm", "slope_ratio_range", "tangential_slope")
               if k not in reg.meta.statistics]
    if missing:
        pytest.skip(f"{weights.with_suffix('.json')} lacks statistics {missing} "
                    "(model.evaluation.curve_statistics.postprocessing_statistics)")
    return reg
