"""The slice-scoring CNN and the bpreg VGG16 baseline used only for speed comparisons."""

from __future__ import annotations

import torch
from torch import nn

#: Channels of the five stride-2 stages of :class:`SliceScoreNet`.
STAGE_CHANNELS = (16, 32, 64, 128, 256)


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SliceScoreNet(nn.Module):
    """Compact VGG-style CNN mapping a 1×128×128 slice to one score.

    Five stages, each a stride-2 3×3 conv followed by a 3×3 conv, halve the grid down to
    4×4; a 1×1 conv, global average pooling and a linear layer give the score (the head
    of SSBR / bpreg, without VGG16's 15 M parameters). Plain convolutions and batch norm
    fold into fast CPU kernels; depthwise convolutions were avoided because they train
    slowly on CPUs.
    """

    def __init__(self, channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__()
        self.channels = tuple(channels)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers.append(_conv_bn(c_in, c, stride=2))
            if i > 0:
                layers.append(_conv_bn(c, c, stride=1))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(c_in, c_in, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c_in, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score a batch of shape (n, 1, H, W); returns shape (n,)."""
        out: torch.Tensor = self.head(self.features(x))
        return out[:, 0]


class VGG16Baseline(nn.Module):
    """bpreg's network (VGG16 conv layers, 1-channel input, 1×1 conv head): speed baseline."""

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for v in self._CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(512, 512, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(512, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out[:, 0]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
