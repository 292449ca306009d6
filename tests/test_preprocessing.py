"""edgekit.data.preprocessing: the model's preprocessing contract (issue 15).

Every option round-trips through the metadata, the first metadata form still loads, bad values
are refused naming the field, and apply() computes what torchvision's transforms compute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.core.errors import BadInput
from edgekit.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_SIDE,
    Preprocessing,
    preprocessing_for_torchvision_weights,
)

CALIBRATION = Path(__file__).resolve().parent.parent / "calibration"


@pytest.fixture(scope="module")
def photo():
    """A real, non-square RGB photo (451x300): exercises the shorter-side rule and the crop offsets."""
    with Image.open(CALIBRATION / "chelsea.jpg") as image:
        return image.convert("RGB")


def _torchvision(transform, image) -> np.ndarray:
    return transform(image).numpy()


# ---- the metadata: round trip and the first form ------------------------------------------------

VARIANTS = {
    "imagenet": Preprocessing.for_input_size(224),
    "resize_none": Preprocessing(resize=None, crop=32),
    "resize": Preprocessing(resize=40, crop=32),
    "bicubic": Preprocessing(resize=36, crop=32, interpolation="bicubic"),
    "nearest": Preprocessing(resize=36, crop=32, interpolation="nearest"),
    "bgr": Preprocessing(resize=36, crop=32, channels="bgr", mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3)),
    "gray1": Preprocessing(resize=None, crop=32, channels="gray", input_channels=1, mean=(0.5,), std=(0.25,)),
    "gray3_one_value": Preprocessing(resize=None, crop=28, channels="gray", mean=(0.1307,), std=(0.3081,)),
    "gray3_three_values": Preprocessing(resize=None, crop=32, channels="gray"),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_option_round_trips_through_the_metadata(name):
    original = VARIANTS[name]
    data = json.loads(json.dumps(original.to_dict()))  # what really lands in the file's metadata
    assert data["version"] == 2 and set(data) == {
        "version", "resize", "crop", "mean", "std", "interpolation", "channels", "input_channels", "layout",
    }
    again = Preprocessing.from_dict(data)
    assert again == original
    assert again.describe() == original.describe()


def test_to_dict_format():
    assert Preprocessing(resize=None, crop=32, channels="gray", input_channels=1, mean=[0.5], std=[0.25]).to_dict() == {
        "version": 2, "resize": None, "crop": 32, "mean": [0.5], "std": [0.25], "interpolation": "bilinear",
        "channels": "gray", "input_channels": 1, "layout": "NCHW",
    }


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_the_first_metadata_form_still_loads(order, photo):
    # exactly what edgekit wrote before issue 15 (dataclasses.asdict of the old Preprocessing)
    old = {"resize": 73, "crop": 64, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
           "channel_order": order, "layout": "NCHW", "interpolation": "bilinear"}
    loaded = Preprocessing.from_dict(old)
    assert loaded == Preprocessing(resize=73, crop=64, channels=order.lower())
    assert Preprocessing.from_dict(loaded.to_dict()) == loaded
    rgb = Preprocessing(resize=73, crop=64).apply(photo)
    # BGR is RGB with the channel axis reversed before normalising
    expected = rgb if order == "RGB" else Preprocessing(resize=73, crop=64, mean=IMAGENET_MEAN[::-1],
                                                         std=IMAGENET_STD[::-1]).apply(photo)[::-1]
    np.testing.assert_array_equal(loaded.apply(photo), expected)


# ---- refused values: BadInput, one line, naming the field ---------------------------------------

BAD = [
    ("resize", {"resize": 0}),
    ("resize", {"resize": -5}),
    ("resize", {"resize": MAX_IMAGE_SIDE + 1}),
    ("resize", {"resize": 36.5}),
    ("crop", {"crop": 0}),
    ("crop", {"crop": MAX_IMAGE_SIDE + 1}),
    ("crop", {"resize": 30, "crop": 32}),
    ("mean", {"mean": (0.5, 0.5)}),
    ("mean", {"mean": (0.5, float("nan"), 0.5)}),
    ("mean", {"mean": "0.5"}),
    ("std", {"std": (0.2, 0.0, 0.2)}),
    ("std", {"std": (0.2, -0.1, 0.2)}),
    ("std", {"std": (0.2, float("inf"), 0.2)}),
    ("std", {"std": (0.2, 0.2, 0.2, 0.2)}),
    ("mean", {"channels": "gray", "input_channels": 1}),  # gray into 1 channel takes one value
    ("interpolation", {"interpolation": "lanczos"}),
    ("channels", {"channels": "yuv"}),
    ("input_channels", {"input_channels": 2}),
    ("input_channels", {"input_channels": 1}),  # rgb into one channel: only gray can
    ("layout", {"layout": "NHWC"}),
]


@pytest.mark.parametrize("field, change", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_bad_values_are_refused_naming_the_field(field, change):
    values = {"resize": 36, "crop": 32, **change}
    with pytest.raises(BadInput) as direct:
        Preprocessing(**values)
    assert f"'{field}'" in str(direct.value) and "\n" not in str(direct.value)

    data = Preprocessing(resize=36, crop=32).to_dict()
    data.update({k: list(v) if isinstance(v, tuple) else v for k, v in change.items()})
    with pytest.raises(BadInput) as loaded:
        Preprocessing.from_dict(data)
    message = str(loaded.value)
    assert f"metadata field '{field}'" in message and "\n" not in message


@pytest.mark.parametrize(
    "data, field",
    [
        ({"std": "abc"}, "std"),
        ({"std": [0.2, "x", 0.2]}, "std"),
        ({"mean": True}, "mean"),
        ({"crop": "big"}, "crop"),
        ({"resize": [36]}, "resize"),
        ({"channels": 3}, "channels"),
        ({"channel_order": "RGBA", "channels": None}, "channel_order"),
        ({"version": 9}, "version"),
    ],
)
def test_metadata_type_errors_become_bad_input(data, field):
    base = Preprocessing(resize=36, crop=32).to_dict()
    base.update(data)
    if base.get("channels") is None:
        base.pop("channels")
    with pytest.raises(BadInput, match=f"metadata field '{field}' is"):
        Preprocessing.from_dict(base)


def test_metadata_without_the_required_fields_or_with_unknown_ones_is_refused():
    with pytest.raises(BadInput, match="has no mean, std"):
        Preprocessing.from_dict({"resize": 36, "crop": 32})
    with pytest.raises(BadInput, match="unknown field"):
        Preprocessing.from_dict({**Preprocessing(resize=36, crop=32).to_dict(), "stdev": [1, 1, 1]})
    with pytest.raises(BadInput, match="expected an object"):
        Preprocessing.from_dict(["resize", 36])


# ---- apply(): what torchvision computes ----------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_apply_matches_torchvisions_preset(interpolation, photo):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    mode = InterpolationMode(interpolation)
    ours = Preprocessing(resize=75, crop=64, interpolation=interpolation).apply(photo)
    theirs = _torchvision(ImageClassification(crop_size=64, resize_size=75, interpolation=mode), photo)
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_interpolation_really_changes_the_output(photo):
    outputs = {name: Preprocessing(resize=40, crop=32, interpolation=name).apply(photo) for name in
               ("bilinear", "bicubic", "nearest")}
    for a, b in [("bilinear", "bicubic"), ("bilinear", "nearest"), ("bicubic", "nearest")]:
        assert np.abs(outputs[a] - outputs[b]).max() > 0.05, (a, b)


def test_resize_none_is_an_exact_crop_by_crop_resize(photo):
    from torchvision import transforms

    prep = Preprocessing(resize=None, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    expected = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                   transforms.Normalize((0.5,) * 3, (0.5,) * 3)])(photo).numpy()
    out = prep.apply(photo)
    assert out.shape == prep.chw == (3, 32, 32)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    # the whole image is kept (aspect squashed), not a centre crop of it: a left-edge marker survives
    marked = photo.copy()
    marked.paste((255, 0, 0), (0, 0, 30, photo.height))
    assert prep.apply(marked)[0, :, 0].min() > 0.9


def test_a_tiny_image_is_upscaled_with_resize_none():
    """The digits case: an 8x8 grayscale image into a 32x32 model."""
    digit = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8), mode="L")
    out = Preprocessing(resize=None, crop=32, channels="gray", input_channels=1, mean=(0.5,), std=(0.5,)).apply(digit)
    assert out.shape == (1, 32, 32)
    np.testing.assert_allclose(out[0], (np.asarray(digit.resize((32, 32), Image.Resampling.BILINEAR)) / 255 - 0.5)
                               / 0.5, atol=1e-6)


@pytest.mark.parametrize("input_channels", [1, 3])
def test_gray_gives_one_or_three_replicated_channels(input_channels, photo):
    from torchvision import transforms

    prep = Preprocessing(resize=40, crop=32, channels="gray", input_channels=input_channels,
                         mean=(0.45,), std=(0.25,))
    out = prep.apply(photo)
    assert out.shape == prep.chw == (input_channels, 32, 32)
    expected = transforms.Compose([transforms.Grayscale(input_channels), transforms.Resize(40),
                                   transforms.CenterCrop(32), transforms.ToTensor(),
                                   transforms.Normalize((0.45,) * input_channels, (0.25,) * input_channels)])
    np.testing.assert_allclose(out, expected(photo).numpy(), atol=1e-6, rtol=0)
    if input_channels == 3:
        np.testing.assert_array_equal(out[0], out[1])
        np.testing.assert_array_equal(out[0], out[2])


def test_gray_with_three_values_normalises_each_channel(photo):
    out = Preprocessing(resize=None, crop=16, channels="gray").apply(photo)
    one = Preprocessing(resize=None, crop=16, channels="gray", input_channels=1, mean=(0.0,), std=(1.0,)).apply(photo)
    for c in range(3):
        np.testing.assert_allclose(out[c], (one[0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-5)


def test_gray_photos_and_alpha_go_through_rgb_models():
    gray = Image.open(CALIBRATION / "camera.png")
    assert gray.mode == "L" and Preprocessing(resize=36, crop=32).apply(gray).shape == (3, 32, 32)
    rgba = Image.new("RGBA", (40, 50), (0, 0, 0, 0))  # transparent -> white
    np.testing.assert_allclose(Preprocessing(resize=None, crop=8, mean=(0,) * 3, std=(1,) * 3).apply(rgba), 1.0)


def test_describe_is_one_line():
    assert Preprocessing(resize=36, crop=32).describe() == (
        "resize 36 (shorter side, bilinear), centre crop 32, RGB, mean (0.485, 0.456, 0.406), "
        "std (0.229, 0.224, 0.225)")
    gray = Preprocessing(resize=None, crop=32, channels="gray", input_channels=1, mean=(0.5,), std=(0.5,))
    assert gray.describe() == "resize to 32x32 (bilinear, aspect not kept), gray x1, mean (0.5), std (0.5)"


# ---- torchvision's own weights, offline -----------------------------------------------------------

@pytest.mark.parametrize("name, resize", [("ResNet50_Weights.IMAGENET1K_V1", 256),
                                          ("ResNet50_Weights.IMAGENET1K_V2", 232)])
def test_torchvision_weights_transforms_read_offline(name, resize, monkeypatch, tmp_path, photo):
    import socket

    from torchvision.models import get_weight

    def no_network(*args, **kwargs):
        raise AssertionError("reading a weights' transforms must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # and needs no cached checkpoint
    prep = preprocessing_for_torchvision_weights(name)
    assert prep == Preprocessing(resize=resize, crop=224, interpolation="bilinear")
    np.testing.assert_allclose(prep.apply(photo), get_weight(name).transforms()(photo).numpy(), atol=1e-6, rtol=0)


def test_unknown_torchvision_weights_are_bad_input():
    with pytest.raises(BadInput, match="ResNet50_Weights.IMAGENET1K_V9"):
        preprocessing_for_torchvision_weights("ResNet50_Weights.IMAGENET1K_V9")
    with pytest.raises(BadInput, match="unknown"):
        preprocessing_for_torchvision_weights("resnet50")


# ---- from_options: the CLI's options over a JSON file over the defaults --------------------------

def test_from_options_defaults_are_for_input_size():
    assert Preprocessing.from_options(224) == Preprocessing.for_input_size(224)
    assert Preprocessing.from_options("64", crop="64") == Preprocessing.for_input_size(64)


def test_from_options_parses_strings():
    prep = Preprocessing.from_options(32, resize="None", mean="0.5, 0.5, 0.5", std="0.25,0.25,0.25",
                                      interpolation="BICUBIC", channels="bgr")
    assert prep == Preprocessing(resize=None, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bicubic",
                                 channels="bgr")
    assert Preprocessing.from_options(32, resize="36").resize == 36
    gray = Preprocessing.from_options(32, channels="gray", input_channels="1", mean="0.5", std="0.5")
    assert gray.chw == (1, 32, 32)


def test_from_options_file_with_an_override(tmp_path):
    path = tmp_path / "digits.json"
    path.write_text(json.dumps({"resize": None, "crop": 32, "mean": [0.5], "std": [0.5], "channels": "gray",
                                "input_channels": 1, "interpolation": "nearest"}))
    from_file = Preprocessing.from_options(32, file=path)
    assert from_file == Preprocessing(resize=None, crop=32, mean=(0.5,), std=(0.5,), channels="gray",
                                      input_channels=1, interpolation="nearest")
    overridden = Preprocessing.from_options(32, file=str(path), std="0.3", interpolation="bilinear")
    assert overridden.std == (0.3,) and overridden.interpolation == "bilinear" and overridden.mean == (0.5,)
    # a file holding a model's metadata block works too, first form included
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"resize": 36, "crop": 32, "mean": [0.1] * 3, "std": [0.2] * 3,
                               "channel_order": "BGR", "layout": "NCHW", "interpolation": "bilinear"}))
    assert Preprocessing.from_options(32, file=old).channels == "bgr"


def test_from_options_errors_name_the_option_or_the_file(tmp_path):
    with pytest.raises(BadInput, match=r"^--std is \(0\.0, 1\.0, 1\.0\): .*> 0"):
        Preprocessing.from_options(32, std="0,1,1")
    with pytest.raises(BadInput, match=r"^--mean is '0\.5,x': expected numbers"):
        Preprocessing.from_options(32, mean="0.5,x")
    with pytest.raises(BadInput, match=r"^--resize is 'big': expected a whole number or none"):
        Preprocessing.from_options(32, resize="big")
    with pytest.raises(BadInput, match=r"^--crop is 28 but --input-size is 32: .*--input-size 28"):
        Preprocessing.from_options(32, crop=28)
    with pytest.raises(BadInput, match="^--input-size"):
        Preprocessing.from_options(0)
    with pytest.raises(BadInput, match=r"^the default mean is .*1 value"):  # gray x1 needs its own mean
        Preprocessing.from_options(32, channels="gray", input_channels=1, std="0.5")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"std": [0.2, 0, 0.2]}))
    with pytest.raises(BadInput, match=rf"^preprocessing file {bad} field 'std' is"):
        Preprocessing.from_options(32, file=bad)
    bad.write_text(json.dumps({"crop": 64}))
    with pytest.raises(BadInput, match=rf"^preprocessing file {bad} field 'crop' is 64 but --input-size is 32"):
        Preprocessing.from_options(32, file=bad)
    bad.write_text("{not json")
    with pytest.raises(BadInput, match="is not valid JSON"):
        Preprocessing.from_options(32, file=bad)
    with pytest.raises(BadInput, match="does not exist"):
        Preprocessing.from_options(32, file=tmp_path / "missing.json")
    bad.write_text(json.dumps({"stdev": [1, 1, 1]}))
    with pytest.raises(BadInput, match="unknown field"):
        Preprocessing.from_options(32, file=bad)
