"""Order and distance losses against hand-computed values (thesis eq. 3.5, 4.7, 5.1)."""

from __future__ import annotations

import math

import pytest
import torch

from model.training.losses import (
    anchor_loss,
    classification_order_loss,
    distance_loss,
    heuristic_order_loss,
)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_heuristic_order_loss_matches_hand_computation() -> None:
    scores = torch.tensor([[0.0, 1.0, 1.5], [2.0, 1.0, 3.0]])
    dh = torch.tensor([50.0, 100.0])
    beta = 0.01
    terms = [
        (_sig(0.5) - _sig(1.0)) ** 2,
        (_sig(0.5) - _sig(0.5)) ** 2,
        (_sig(1.0) - _sig(-1.0)) ** 2,
        (_sig(1.0) - _sig(2.0)) ** 2,
    ]
    assert heuristic_order_loss(scores, dh, beta).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_heuristic_order_loss_is_zero_at_beta_delta_h() -> None:
    dh = torch.tensor([30.0])
    scores = torch.tensor([[1.0, 1.3, 1.6, 1.9]])  # Δs = 0.01/mm · 30 mm
    assert heuristic_order_loss(scores, dh, 0.01).item() == pytest.approx(0.0, abs=1e-12)


def test_classification_order_loss_matches_hand_computation() -> None:
    scores = torch.tensor([[0.0, 2.0, 1.0]])
    expected = -(math.log(_sig(2.0)) + math.log(_sig(-1.0))) / 2
    assert classification_order_loss(scores).item() == pytest.approx(expected, rel=1e-6)


def test_classification_order_loss_drops_numerically_zero_terms() -> None:
    # σ(-200) rounds to 0 in float32: eq. 5.1 leaves the term out instead of returning inf.
    scores = torch.tensor([[0.0, -200.0], [0.0, 1.0]], dtype=torch.float32)
    loss = classification_order_loss(scores)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(-math.log(_sig(1.0)), rel=1e-6)


def test_distance_loss_is_smooth_l1_of_second_differences() -> None:
    scores = torch.tensor([[0.0, 1.0, 3.0, 3.5]])  # Δs = 1, 2, 0.5 → second diffs 1, -1.5
    expected = ((0.5 * 1.0**2) + (1.5 - 0.5)) / 2
    assert distance_loss(scores).item() == pytest.approx(expected, rel=1e-6)
    assert distance_loss(torch.tensor([[0.0, 1.0]])).item() == 0.0


def test_anchor_loss_is_huber_with_bounded_pull() -> None:
    scores = torch.tensor([1.0, 0.0, 5.0])
    targets = torch.tensor([1.1, 0.0, 1.0])
    # 0.1 inside δ = 0.4: 0.5·0.1²/0.4; 4.0 outside: 4.0 − 0.5·0.4
    expected = (0.5 * 0.01 / 0.4 + 0.0 + (4.0 - 0.2)) / 3
    assert float(anchor_loss(scores, targets, 0.4)) == pytest.approx(expected, rel=1e-5)
    scores.requires_grad_(True)
    anchor_loss(scores, targets, 0.4).backward()  # type: ignore[no-untyped-call]
    assert scores.grad is not None and float(scores.grad[2]) == pytest.approx(1 / 3)


def test_anchor_loss_averages_over_the_given_count() -> None:
    scores = torch.tensor([1.0, 0.0, 5.0, 2.0], requires_grad=True)
    targets = torch.tensor([1.1, 0.0, 1.0, 2.0])
    every = anchor_loss(scores, targets, 0.4)
    # averaged over the first two: the other two add their terms but dilute nobody
    over_two = anchor_loss(scores, targets, 0.4, over=2)
    assert float(over_two) == pytest.approx(float(every) * 4 / 2, rel=1e-6)
    over_two.backward()  # type: ignore[no-untyped-call]
    assert scores.grad is not None and float(scores.grad[2]) == pytest.approx(1 / 2)
    assert float(anchor_loss(scores, targets, 0.4, over=4)) == float(every)


def test_anchor_loss_without_anchors_is_zero_and_differentiable() -> None:
    scores = torch.zeros(0, requires_grad=True)
    loss = anchor_loss(scores, torch.zeros(0), 0.4)
    assert float(loss) == 0.0 and loss.requires_grad
