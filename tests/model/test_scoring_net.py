"""The fast scoring network gives the trained network's scores, with and without oneDNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.reading.volume import CTVolume
from model.scoring import preprocess
from model.scoring.inference import BodyPartRegressor, ScoringNet


def _plain_scores(regressor: BodyPartRegressor, slices: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = regressor.net(torch.from_numpy(slices[:, None])).numpy()
    return out


@pytest.fixture(scope="module")
def slices(chest_abdomen_ct: CTVolume) -> np.ndarray:
    """Every tenth slice of a real chest-abdomen CT, preprocessed."""
    part = chest_abdomen_ct.hu[::10]
    return preprocess.preprocess_slices(part, chest_abdomen_ct.pixel_spacing_mm)


def test_scores_equal_the_trained_network(regressor: BodyPartRegressor,
                                          slices: np.ndarray) -> None:
    fast = regressor.raw_scores(slices)
    plain = _plain_scores(regressor, slices)
    assert fast.shape == plain.shape == (len(slices),)
    assert np.ptp(plain) > 1.0  # a real curve, not a constant
    np.testing.assert_allclose(fast, plain, atol=1e-4)


def test_without_onednn_the_dense_copy_scores_alike(regressor: BodyPartRegressor,
                                                     slices: np.ndarray,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    dense = ScoringNet(regressor.net)
    with torch.inference_mode():
        scores = dense(torch.from_numpy(slices[:, None])).numpy()
    np.testing.assert_allclose(scores, _plain_scores(regressor, slices), atol=1e-4)


def test_one_slice_and_a_batch_score_alike(regressor: BodyPartRegressor,
                                           slices: np.ndarray) -> None:
    one = np.concatenate([regressor.raw_scores(slices[i : i + 1]) for i in range(len(slices))])
    np.testing.assert_allclose(one, regressor.raw_scores(slices), atol=1e-4)
