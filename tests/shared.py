"""Where tests find the real CT data, and the marker that skips them without it."""

from __future__ import annotations

import pytest

from model.paths import shared_data_dir

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "manifest.csv").exists(),
    reason=f"real CT data not found at {DATA} (read in place, never copied into the repo)",
)
