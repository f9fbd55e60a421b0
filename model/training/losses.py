"""Order and distance losses of self-supervised body part regression (thesis §4.1.4, §5.1.1).

All losses take ``scores`` of shape (B, m): the predicted scores of m equidistant slices of
each of B volumes, ordered feet → head, and return a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def heuristic_order_loss(
    scores: torch.Tensor, delta_h_mm: torch.Tensor, beta: float
) -> torch.Tensor:
    """Eq. 4.7: mean of ``(σ(β Δh) − σ(Δs))²`` over consecutive slice pairs.

    Parameters
    ----------
    scores : Tensor, shape (B, m)
    delta_h_mm : Tensor, shape (B,)
        Physical distance between consecutive sampled slices of each volume.
    beta : float
        Per-mm factor; the loss vanishes at ``Δs = β Δh`` (eq. 4.8).
    """
    delta_s = scores[:, 1:] - scores[:, :-1]
    target = torch.sigmoid(beta * delta_h_mm)[:, None]
    return ((target - torch.sigmoid(delta_s)) ** 2).mean()


def classification_order_loss(scores: torch.Tensor) -> torch.Tensor:
    """Eq. 5.1: ``−mean ln σ(Δs)`` over pairs whose σ(Δs) is not numerically zero.

    The thesis dropped terms with σ(Δs) = 0 because ln 0 made training diverge to NaN; the
    mean runs over the remaining N* terms. Returns 0 when every term is dropped.
    """
    delta_s = scores[:, 1:] - scores[:, :-1]
    keep = torch.sigmoid(delta_s) != 0
    if not bool(keep.any()):
        return scores.sum() * 0.0
    return -F.logsigmoid(delta_s[keep]).mean()


def distance_loss(scores: torch.Tensor) -> torch.Tensor:
    """Eq. 3.5: smooth-L1 between consecutive score differences (equidistant slices)."""
    delta_s = scores[:, 1:] - scores[:, :-1]
    if delta_s.shape[1] < 2:
        return scores.sum() * 0.0
    return F.smooth_l1_loss(delta_s[:, 1:], delta_s[:, :-1], reduction="mean")


def anchor_loss(scores: torch.Tensor, targets: torch.Tensor, delta: float,
                over: int | None = None) -> torch.Tensor:
    """Huber loss between the scores of anchor slices and their targets (same units).

    Quadratic within ``delta`` of the target, linear beyond it, so a landmark rule that
    fires on the wrong slice pulls with bounded force. The sum is divided by ``over`` (default:
    the number of anchors), so anchors beyond ``over`` add to the loss without shrinking the
    share of the others. Returns 0 without anchors.
    """
    if targets.numel() == 0:
        return scores.sum() * 0.0
    loss = F.smooth_l1_loss(scores.reshape(-1), targets.reshape(-1), beta=delta)
    if over is None or over == targets.numel():
        return loss
    return loss * (targets.numel() / max(over, 1))
