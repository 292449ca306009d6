"""The seed chapter's building blocks, corrected.

The chapter's code uses lazy modules (channels inferred at the first forward); they are kept
so its shape facts hold as written, and `materialize` runs one forward so nothing is lazy
when weights are loaded or the model is exported.

Corrections to the seed:
- `Residual`: the seed never sets `conv3` when `use_1x1conv=False` (AttributeError in forward)
  and uses `F` without importing it.
- `ResNeXtBlock`: the seed's `groups` argument is passed as `groups=bot_channels // groups`,
  so it is really the *width of one group*. Here it is `group_width`; the number of groups
  (the cardinality) is `bottleneck_channels // group_width`. The seed's
  `ResNeXtBlock(32, 16, 1)` is `ResNeXtBlock(32, group_width=16, bottleneck_ratio=1)`, i.e. 2 groups.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Residual(nn.Module):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus an identity or 1x1-conv shortcut."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1):
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 conv, grouped 3x3 conv, 1x1 conv (each with BN), plus a shortcut.

    `group_width` is the number of channels in each group of the 3x3 convolution (the seed's
    `groups`); the convolution has `bottleneck_channels // group_width` groups.
    """

    def __init__(
        self,
        num_channels: int,
        group_width: int,
        bottleneck_ratio: float,
        use_1x1conv: bool = False,
        strides: int = 1,
    ):
        super().__init__()
        bottleneck_channels = int(round(num_channels * bottleneck_ratio))
        if group_width <= 0 or bottleneck_channels % group_width:
            raise ValueError(
                f"bottleneck channels ({bottleneck_channels}) must be a multiple of group_width ({group_width})"
            )
        self.cardinality = bottleneck_channels // group_width
        self.conv1 = nn.LazyConv2d(bottleneck_channels, kernel_size=1, stride=1)
        self.conv2 = nn.LazyConv2d(
            bottleneck_channels, kernel_size=3, stride=strides, padding=1, groups=self.cardinality
        )
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()
        self.bn3 = nn.LazyBatchNorm2d()
        if use_1x1conv:
            self.conv4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
            self.bn4 = nn.LazyBatchNorm2d()
        else:
            self.conv4 = None
            self.bn4 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.conv4 is not None:
            x = self.bn4(self.conv4(x))
        return F.relu(y + x)


def conv_block(num_channels: int) -> nn.Sequential:
    """DenseNet's pre-activation layer: BN, ReLU, 3x3 conv to `num_channels` (the growth rate)."""
    return nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """`num_convs` conv blocks; each one's output is concatenated to its input along channels."""

    def __init__(self, num_convs: int, num_channels: int):
        super().__init__()
        self.net = nn.Sequential(*(conv_block(num_channels) for _ in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def transition_block(num_channels: int) -> nn.Sequential:
    """DenseNet's transition: BN, ReLU, 1x1 conv to `num_channels`, 2x2 average pool (halves H and W)."""
    return nn.Sequential(
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


def stem() -> nn.Sequential:
    """The chapter's first stage (its `b1`): 7x7/2 conv, BN, ReLU, 3x3/2 max-pool."""
    return nn.Sequential(
        nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def classifier_head(num_classes: int, pre_activation: bool = False) -> nn.Sequential:
    """Global average pool, flatten, linear; DenseNet's head has BN-ReLU first."""
    layers: list[nn.Module] = [nn.LazyBatchNorm2d(), nn.ReLU()] if pre_activation else []
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)]
    return nn.Sequential(*layers)


def materialize(model: nn.Module, in_channels: int = 3, size: int = 64) -> nn.Module:
    """Run one forward so every lazy module gets its real shape; channel counts do not depend on `size`."""
    has_lazy = any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in model.modules())
    if has_lazy:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
        model.train(was_training)
    return model
