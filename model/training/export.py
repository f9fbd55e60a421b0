"""Write a trained network as the shipped pair: state dict (.pt) and metadata (.json)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from model.scoring.inference import ModelMeta
from model.scoring.network import SliceScoreNet


def export_model(net: SliceScoreNet, training: dict[str, Any], out_dir: Path,
                 stem: str = "bpr_model") -> Path:
    """Save ``stem.pt`` and an uncalibrated ``stem.json``; the version is the weights' hash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{stem}.pt"
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(state, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    ModelMeta(version=f"ssbr-{digest}", channels=list(net.channels), training=training).write(
        weights.with_suffix(".json"))
    return weights
