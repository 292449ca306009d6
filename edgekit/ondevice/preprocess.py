"""The model's preprocessing, step by step: a PIL image to the uint8 pixels the model sees (before normalisation),
and their normalisation. One copy: the bundle's check.py (--image, the golden data) and edgekit's own
Preprocessing.apply (edgekit/data/preprocessing.py) run exactly these steps, so a photo becomes the same tensor on
the host and on the board. numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np


def to_rgb(image):
    """Any PIL mode -> 8-bit RGB: 16-bit and float images rescaled, alpha composited on white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def crop_uint8(image, pre: dict) -> np.ndarray:
    """A PIL image -> the model's pixels before normalisation: uint8 (C, H, W), in the model's channel order.

    1. to 8-bit RGB (alpha on white), or gray; 2. resize (PIL, `interpolation`): `resize` = N scales the
    shorter side to N (the longer side truncated) and centre-crops `crop` (N, or [H, W]); `resize` = null resizes
    straight to the crop; "letterbox" fits the image into it keeping the aspect, padded right/bottom with `pad_value`; 3. BGR models get the channels reversed; gray ones repeated to the input channels.
    """
    from PIL import Image

    image = to_rgb(image)
    if pre["channels"] == "gray":
        image = image.convert("L")
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}[pre["interpolation"]]
    crop, resize = pre["crop"], pre["resize"]
    ch, cw = (int(crop[0]), int(crop[1])) if isinstance(crop, (list, tuple)) else (int(crop), int(crop))  # N or [H, W]
    if resize is None:
        image = image.resize((cw, ch), resample)
    elif resize == "letterbox":  # fit H x W keeping the aspect, top-left, pad right/bottom with pad_value
        w, h = image.size
        scale = min(cw / w, ch / h)
        inner = image.resize((max(1, min(cw, round(w * scale))), max(1, min(ch, round(h * scale)))), resample)
        pad = int(pre.get("pad_value", 0))
        image = Image.new(image.mode, (cw, ch), pad if image.mode == "L" else (pad,) * 3)
        image.paste(inner, (0, 0))
    else:
        resize = int(resize)
        w, h = image.size
        size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        image = image.resize(size, resample)
        left = int(round((size[0] - cw) / 2.0))
        top = int(round((size[1] - ch) / 2.0))
        image = image.crop((left, top, left + cw, top + ch))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], int(pre.get("input_channels", 3)), axis=2)
    if pre["channels"] == "bgr":
        array = array[..., ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) or (C, H, W) -> float32 model input: (x / 255 - mean) / std per channel, in float32."""
    x = np.asarray(images).astype(np.float32) / 255.0
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
