"""Load the shipped (or a given) model and score CT volumes slice by slice."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model.paths import DEFAULT_META, DEFAULT_WEIGHTS
from model.reading.volume import CTVolume
from model.scoring import preprocess
from model.scoring.network import SliceScoreNet

#: Slices per forward pass; 128 slices of 128² float32 are 8 MB of input.
INFERENCE_BATCH = 128


@dataclass
class ModelMeta:
    """Everything besides the weights that is needed to use and interpret the model.

    ``score_scale``/``score_offset`` map network output to the reference-table scale
    (``score = scale · raw + offset``), fitted by ``bpr evaluate --calibrate`` so that the
    landmark reference table lines up with published anatomy positions. The remaining
    statistics are measured on training data and used by score post-processing.
    """

    version: str
    channels: list[int]
    input_size: int = preprocess.INPUT_SIZE
    pixel_spacing_mm: float = preprocess.PIXEL_SPACING_MM
    hu_min: float = preprocess.HU_MIN
    hu_max: float = preprocess.HU_MAX
    score_scale: float = 1.0
    score_offset: float = 0.0
    reference_table: dict[str, float] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ModelMeta:
        return cls(**json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, allow_nan=False) + "\n")


@dataclass
class SliceScores:
    """Raw per-slice output of the network for one volume."""

    z_mm: npt.NDArray[np.float64]
    raw: npt.NDArray[np.float32]  # network units
    scores: npt.NDArray[np.float64]  # reference-table scale


class BodyPartRegressor:
    """A trained slice-score network with its metadata."""

    def __init__(self, net: SliceScoreNet, meta: ModelMeta) -> None:
        self.net = net.eval()
        self.meta = meta
        if (meta.input_size, meta.pixel_spacing_mm, meta.hu_min, meta.hu_max) != (
            preprocess.INPUT_SIZE, preprocess.PIXEL_SPACING_MM, preprocess.HU_MIN,
            preprocess.HU_MAX,
        ):
            raise ValueError("model was trained with other preprocessing settings than this code")

    @classmethod
    def load(cls, weights: Path = DEFAULT_WEIGHTS, meta: Path | None = None) -> BodyPartRegressor:
        """Load weights (a state dict, or a training checkpoint's ``model``) and metadata.

        ``meta`` defaults to the JSON beside the weights with the same stem.
        """
        meta_path = meta or (DEFAULT_META if weights == DEFAULT_WEIGHTS
                             else weights.with_suffix(".json"))
        model_meta = ModelMeta.read(meta_path)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        net = SliceScoreNet(tuple(model_meta.channels))
        net.load_state_dict(state)
        return cls(net, model_meta)

    def raw_scores(self, slices: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Network output for preprocessed slices of shape (n, S, S)."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(slices), INFERENCE_BATCH):
                x = torch.from_numpy(np.ascontiguousarray(slices[i : i + INFERENCE_BATCH],
                                                          dtype=np.float32))
                out.append(self.net(x[:, None]).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def to_reference_scale(self, raw: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        return self.meta.score_scale * raw.astype(np.float64) + self.meta.score_offset

    def score_volume(self, volume: CTVolume) -> SliceScores:
        """Score every slice of ``volume``."""
        slices = preprocess.preprocess_slices(volume.hu, volume.pixel_spacing_mm)
        raw = self.raw_scores(slices)
        return SliceScores(z_mm=volume.z_mm, raw=raw, scores=self.to_reference_scale(raw))
