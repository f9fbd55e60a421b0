"""Per-slice augmentations of table 4.4: reproducible, in range, per-slice parameters."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from model.training.augment import AugmentConfig, augment


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(16, 1, 64, 64, generator=g) * 2 - 1


def _only(**enabled: Any) -> AugmentConfig:
    """A config with every augmentation off except ``enabled``."""
    off = AugmentConfig(noise_p=0, blur_p=0, scale_limit=0, rotate_limit_deg=0, flip_p=0,
                        transpose_p=0, contrast_p=0, brightness_p=0, frame_p=0)
    return replace(off, **enabled)


def test_same_seed_same_output() -> None:
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_values_stay_in_unit_range_and_shape_is_kept() -> None:
    y = augment(_batch(), torch.Generator().manual_seed(0))
    assert y.shape == (16, 1, 64, 64) and y.min() >= -1 and y.max() <= 1


def test_each_slice_gets_its_own_transform() -> None:
    x = _batch()[:1].repeat(32, 1, 1, 1)
    y = augment(x, torch.Generator().manual_seed(0))
    assert len({tuple(s.flatten().tolist()) for s in y}) == 32


def test_identity_when_everything_is_off() -> None:
    off = _only()
    x = _batch()
    assert torch.allclose(augment(x, torch.Generator().manual_seed(0), off), x, atol=1e-5)


def test_frame_sets_the_outside_of_a_circle_to_air() -> None:
    only_frame = _only(frame_p=1.0)
    y = augment(torch.ones(4, 1, 64, 64), torch.Generator().manual_seed(0), only_frame)
    assert torch.all(y[:, :, 0, 0] == -1) and torch.all(y[:, :, 32, 32] == 1)


def test_transpose_and_flip_are_exact_permutations() -> None:
    flips = _only(flip_p=1.0, transpose_p=1.0)
    x = _batch()
    y = augment(x, torch.Generator().manual_seed(0), flips)
    # A permutation of pixels keeps the sorted values (up to interpolation round-off).
    assert torch.allclose(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values, atol=1e-4)
    assert not torch.allclose(y, x)


def test_small_fov_keeps_one_box_of_tissue_in_air() -> None:
    only_box = _only(small_fov_p=1.0, small_fov_width=(0.2, 0.3))
    y = augment(torch.ones(8, 1, 64, 64), torch.Generator().manual_seed(0), only_box)
    for s in y[:, 0]:
        rows, cols = torch.nonzero(s == 1, as_tuple=True)
        kept = (rows.max() - rows.min() + 1) / 64, (cols.max() - cols.min() + 1) / 64
        assert 0.2 <= kept[0] <= 0.32 and abs(kept[0] - kept[1]) < 0.05  # a square box
        assert int((s == 1).sum()) == len(rows) and torch.all((s == 1) | (s == -1))


def test_small_fov_off_by_default_keeps_the_random_stream() -> None:
    x = _batch()
    default = augment(x, torch.Generator().manual_seed(3))
    explicit = augment(x, torch.Generator().manual_seed(3), AugmentConfig(small_fov_p=0.0))
    assert torch.equal(default, explicit)
