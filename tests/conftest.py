"""Shared fixtures: the real CT data beside the checkout (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "manifest.csv").exists():
        pytest.skip(f"real CT data not found at {path} (set BPR_SHARED_DATA)")
    return path
