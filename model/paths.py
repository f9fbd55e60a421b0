"""Where the package finds its shipped weights and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

#: Folder of the shipped model (weights, metadata, model card).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Shipped network weights (state dict).
DEFAULT_WEIGHTS = WEIGHTS_DIR / "bpr_model.pt"
#: Shipped metadata: architecture, preprocessing, score scale, reference table, statistics.
DEFAULT_META = WEIGHTS_DIR / "bpr_model.json"


def shared_data_dir() -> Path:
    """``$BPR_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("BPR_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"
