"""The registry: names, aliases, error messages, seeded weights."""

import pytest
import torch

from edgekit.core.errors import BadInput
from edgekit.models import aliases, create_model, get_spec, list_models

TORCHVISION = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "densenet121", "densenet161", "densenet169", "densenet201",
}


def test_every_required_model_is_registered():
    names = {s.name for s in list_models()}
    assert TORCHVISION <= names
    assert {"textbook_resnet18", "textbook_resnext", "textbook_densenet"} <= names


@pytest.mark.parametrize("alias,target", [("resnet", "resnet18"), ("resnext", "resnext50_32x4d"), ("densenet", "densenet121")])
def test_aliases(alias, target):
    assert aliases()[alias] == target
    assert get_spec(alias).name == target
    assert get_spec(alias.upper()).name == target


def test_unknown_model_names_close_matches_and_the_list():
    with pytest.raises(BadInput) as info:
        get_spec("densnet")
    message = str(info.value)
    assert "unknown model 'densnet'" in message
    assert "did you mean densenet" in message
    assert "resnext50_32x4d" in message  # the full list follows
    assert info.value.exit_code == 2


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("textbook_resnet18", input_size=64, seed=3)
    after = torch.rand(1)
    b = create_model("textbook_resnet18", input_size=64, seed=3)
    c = create_model("textbook_resnet18", input_size=64, seed=4)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["net.0.0.weight"], sc["net.0.0.weight"])


def test_settled_random_model_has_trained_scale_logits():
    # Without settling, a random ResNet-152 gives logits ~1e8 in eval mode.
    from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
    from edgekit.data.preprocessing import Preprocessing

    model = create_model("resnet50", input_size=64)
    photos = load_image_folder(DEFAULT_CALIBRATION_DIR, Preprocessing.for_input_size(64)).tensors
    with torch.no_grad():
        logits = model(torch.from_numpy(photos))
    assert 0.5 < float(logits.std()) < 2.0
    assert len(set(logits.argmax(1).tolist())) > 1  # not a constant classifier


def test_num_classes_must_be_positive():
    with pytest.raises(BadInput, match="at least 1"):
        create_model("resnet18", num_classes=0)
