"""The chapter's networks, assembled from blocks.py (ResNet-18, a ResNeXt, DenseNet). Imported only
when a textbook model is built (textbook.py registers them without importing torch)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgekit.models.blocks import (
    DenseBlock,
    Residual,
    ResNeXtBlock,
    classifier_head,
    stem,
    transition_block,
)


class TextbookNet(nn.Module):
    """A stem, a sequence of stages and a classifier head in one `net` Sequential, as in the chapter."""

    def __init__(self, stages: list[tuple[str, nn.Module]], head: nn.Module):
        super().__init__()
        self.net = nn.Sequential(stem())
        for name, stage in stages:
            self.net.add_module(name, stage)
        self.net.add_module("last", head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def reset_parameters_seeded(self) -> None:
        """Xavier-uniform conv/linear weights and zero biases (the seed applied xavier to every
        module, which fails on BatchNorm's 1-D weights); BatchNorm keeps weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _stage(num_blocks: int, first: bool, block) -> nn.Sequential:
    """`num_blocks` blocks; the first stage keeps the stem's resolution, later ones open with a block
    that halves it through a strided 1x1 shortcut. `block(**kw)` builds one block (ResNet or ResNeXt)."""
    return nn.Sequential(
        *(block(use_1x1conv=True, strides=2) if i == 0 and not first else block() for i in range(num_blocks))
    )


def textbook_resnet(num_classes: int, arch=((2, 64), (2, 128), (2, 256), (2, 512))) -> TextbookNet:
    """The chapter's ResNet-18: stem, four stages of two Residual blocks, global pool, linear."""
    stages = [(f"b{i + 2}", _stage(n, i == 0, partial(Residual, c))) for i, (n, c) in enumerate(arch)]
    return TextbookNet(stages, classifier_head(num_classes))


def textbook_resnext(
    num_classes: int,
    arch=((2, 64), (2, 128), (2, 256), (2, 512)),
    cardinality: int = 16,
    bottleneck_ratio: float = 1.0,
) -> TextbookNet:
    """The ResNet stages with a cardinality (as timm builds ResNeXt): each grouped 3x3 conv has
    `cardinality` groups."""
    stages = []
    for i, (n, c) in enumerate(arch):
        group_width = int(round(c * bottleneck_ratio)) // cardinality
        stages.append((f"b{i + 2}", _stage(n, i == 0, partial(ResNeXtBlock, c, group_width, bottleneck_ratio))))
    return TextbookNet(stages, classifier_head(num_classes))


def textbook_densenet(
    num_classes: int, num_channels: int = 64, growth_rate: int = 32, arch=(4, 4, 4, 4)
) -> TextbookNet:
    """The chapter's DenseNet: four dense blocks of 4 convs (growth 32), transitions halving channels."""
    stages: list[tuple[str, nn.Module]] = []
    for i, num_convs in enumerate(arch):
        stages.append((f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate)))
        num_channels += num_convs * growth_rate
        if i != len(arch) - 1:
            num_channels //= 2
            stages.append((f"tran_blk{i + 1}", transition_block(num_channels)))
    return TextbookNet(stages, classifier_head(num_classes, pre_activation=True))
