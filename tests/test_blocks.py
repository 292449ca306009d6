"""The seed chapter's blocks, corrected; its shape facts are tests."""

import pytest
import torch
from torch import nn

from edgekit.models.blocks import DenseBlock, Residual, ResNeXtBlock, materialize, transition_block
from edgekit.models.textbook_nets import textbook_densenet, textbook_resnet, textbook_resnext


def test_seed_dense_block_shape():
    blk = DenseBlock(2, 10)
    y = blk(torch.randn(4, 3, 8, 8))
    assert y.shape == (4, 23, 8, 8)


def test_seed_transition_block_shape():
    y = DenseBlock(2, 10)(torch.randn(4, 3, 8, 8))
    assert transition_block(10)(y).shape == (4, 10, 4, 4)


def test_dense_block_concatenates_input_first():
    x = torch.randn(1, 3, 8, 8)
    y = DenseBlock(2, 10)(x)
    assert torch.equal(y[:, :3], x)  # the input passes through unchanged


def test_residual_without_1x1_keeps_shape_and_adds_identity():
    # The seed crashed here: conv3 was never set when use_1x1conv=False.
    blk = Residual(3)
    x = torch.randn(4, 3, 6, 6)
    assert blk(x).shape == (4, 3, 6, 6)
    assert blk.conv3 is None


def test_residual_with_1x1_halves_resolution():
    blk = Residual(6, use_1x1conv=True, strides=2)
    assert blk(torch.randn(4, 3, 6, 6)).shape == (4, 6, 3, 3)


def test_resnext_group_width_maps_to_cardinality():
    # The seed's ResNeXtBlock(32, 16, 1): its `groups` is the width of a group, so 32 // 16 = 2 groups.
    blk = ResNeXtBlock(32, group_width=16, bottleneck_ratio=1)
    materialize(blk, in_channels=32, size=8)
    assert blk.conv2.groups == 2
    assert blk.cardinality == 2
    assert blk(torch.randn(4, 32, 96, 96)).shape == (4, 32, 96, 96)


def test_resnext_block_with_shortcut_downsamples():
    blk = ResNeXtBlock(64, group_width=4, bottleneck_ratio=0.5, use_1x1conv=True, strides=2)
    y = blk(torch.randn(2, 32, 16, 16))
    assert y.shape == (2, 64, 8, 8)
    assert blk.conv2.groups == 8 and blk.bn4 is not None


def test_resnext_rejects_group_width_that_does_not_divide():
    with pytest.raises(ValueError, match="multiple of group_width"):
        ResNeXtBlock(30, group_width=4, bottleneck_ratio=1)


@pytest.mark.parametrize("builder", [textbook_resnet, textbook_resnext, textbook_densenet])
def test_textbook_networks_materialise_and_classify(builder):
    model = materialize(builder(10))
    assert not any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in model.modules())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_textbook_densenet_matches_the_chapter():
    model = materialize(textbook_densenet(10))
    blocks = [m for m in model.modules() if isinstance(m, DenseBlock)]
    assert [len(b.net) for b in blocks] == [4, 4, 4, 4]
    # channels: 64 -> +128 -> /2 ... ; the head's BatchNorm sees the last dense block's output
    assert model.net.last[0].num_features == 248
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (7, 7) and convs[0].stride == (2, 2)


def test_textbook_resnext_has_grouped_3x3():
    model = materialize(textbook_resnext(10))
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 8
    assert all(m.kernel_size == (3, 3) for m in grouped)
    assert {m.groups for m in grouped} == {16}
