"""Per-slice data augmentations of thesis table 4.4, batched in torch.

Every slice of a batch draws its own parameters from the given generator, so a run is
reproducible from its seed. Inputs and outputs are (n, 1, H, W) tensors in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of table 4.4 (names follow the table)."""

    noise_std_max: float = 0.04  # 50 HU
    noise_p: float = 0.5
    blur_sigma_max: float = 0.5
    blur_kernel: int = 7
    blur_p: float = 0.5
    scale_limit: float = 0.2
    rotate_limit_deg: float = 10.0
    flip_p: float = 0.5
    transpose_p: float = 0.5
    contrast_delta: float = 0.2
    contrast_p: float = 0.5
    brightness_limit: float = 0.08  # 100 HU
    brightness_p: float = 0.5
    frame_diameter: float = 0.75
    frame_p: float = 0.25
    # Not in table 4.4: small-FOV crops (limb series, tumour boxes) show a patch of tissue in air.
    # Masking all but a random box teaches the network to place such patches by their content.
    small_fov_p: float = 0.0
    small_fov_width: tuple[float, float] = (0.2, 0.6)  # box side as a fraction of the FOV


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _chance(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _geometric(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Flip, transpose, scale and rotate in one affine resampling with reflected borders."""
    n = x.shape[0]
    angle = torch.deg2rad(_uniform(g, n, -cfg.rotate_limit_deg, cfg.rotate_limit_deg))
    # Zooming in by s means sampling a field of view 1/s as wide.
    inv_scale = 1.0 / _uniform(g, n, 1.0 - cfg.scale_limit, 1.0 + cfg.scale_limit)
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    flip = _chance(g, n, cfg.flip_p)
    horizontal = _chance(g, n, 0.5)
    sign = torch.ones(n, 2)
    sign[flip & horizontal, 0] = -1.0
    sign[flip & ~horizontal, 1] = -1.0
    theta[:, :, :2] = theta[:, :, :2] * sign[:, None, :]
    transpose = _chance(g, n, cfg.transpose_p)
    theta[transpose, :, :2] = theta[transpose][:, :, [1, 0]]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _blur(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    n = x.shape[0]
    apply = _chance(g, n, cfg.blur_p)
    if not bool(apply.any()):
        return x
    sigma = _uniform(g, n, 1e-3, cfg.blur_sigma_max)[apply]
    r = cfg.blur_kernel // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k1 = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    kernel = (k1[:, :, None] * k1[:, None, :])[:, None]  # (na, 1, K, K)
    sub = x[apply].transpose(0, 1)  # (1, na, H, W): one group per slice
    sub = F.pad(sub, (r, r, r, r), mode="reflect")
    out = x.clone()
    out[apply] = F.conv2d(sub, kernel, groups=kernel.shape[0]).transpose(0, 1)
    return out


def _intensity(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    n = x.shape[0]
    noise_std = _uniform(g, n, 0.0, cfg.noise_std_max) * _chance(g, n, cfg.noise_p)
    x = x + noise_std[:, None, None, None] * torch.randn(x.shape, generator=g)
    contrast = torch.where(
        _chance(g, n, cfg.contrast_p),
        _uniform(g, n, 1 - cfg.contrast_delta, 1 + cfg.contrast_delta),
        torch.ones(n),
    )
    brightness = _uniform(g, n, -cfg.brightness_limit, cfg.brightness_limit) * _chance(
        g, n, cfg.brightness_p
    )
    return (x * contrast[:, None, None, None] + brightness[:, None, None, None]).clamp(-1.0, 1.0)


def _frame(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Set everything outside a centred circle to air: hides table and arms."""
    n, _, h, w = x.shape
    apply = _chance(g, n, cfg.frame_p)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    outside = (yy**2 + xx**2) > cfg.frame_diameter**2
    mask = apply[:, None, None, None] & outside[None, None]
    return x.masked_fill(mask, -1.0)


def _small_fov(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Set everything outside a random box to air, as in a tight crop padded to the input size."""
    n, _, h, w = x.shape
    apply = _chance(g, n, cfg.small_fov_p)
    if not bool(apply.any()):
        return x
    # Half-side in [-1, 1] coordinates, i.e. the side as a fraction of the FOV.
    half = _uniform(g, n, *cfg.small_fov_width)
    cy = _uniform(g, n, -0.5, 0.5)
    cx = _uniform(g, n, -0.5, 0.5)
    yy = torch.linspace(-1, 1, h)[None, :, None]
    xx = torch.linspace(-1, 1, w)[None, None, :]
    inside = ((yy - cy[:, None, None]).abs() <= half[:, None, None]) & (
        (xx - cx[:, None, None]).abs() <= half[:, None, None]
    )
    mask = apply[:, None, None, None] & ~inside[:, None]
    return x.masked_fill(mask, -1.0)


def augment(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig | None = None) -> torch.Tensor:
    """Apply all augmentations of table 4.4 with independent parameters per slice."""
    cfg = cfg or AugmentConfig()
    x = _geometric(x, g, cfg)
    x = _blur(x, g, cfg)
    x = _intensity(x, g, cfg)
    x = _frame(x, g, cfg)
    return _small_fov(x, g, cfg) if cfg.small_fov_p > 0 else x


