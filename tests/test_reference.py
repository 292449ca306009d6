"""models/reference.py: the PyTorch model a file came from, rebuilt from its metadata."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgekit.onnxfile.artifact import read_metadata
from edgekit.core.errors import BadInput
from edgekit.models.reference import plan_reference, rebuild_reference
from edgekit.runtimes.runners import run_onnx, run_torch
from tests.conftest import CALIBRATION


def test_a_seeded_random_model_comes_back_bit_identical(exported):
    parent = exported("textbook_resnet18")
    proto = onnx.load(str(parent.path))
    model, plan = rebuild_reference(parent.path, proto, read_metadata(proto))
    assert plan.from_metadata and plan.spec.name == "textbook_resnet18" and plan.input_size == 64
    from edgekit.data.images import load_image_folder

    x = load_image_folder(CALIBRATION, plan.preprocessing).tensors[:3]
    np.testing.assert_allclose(run_torch(model, x), run_onnx(parent.path, x, 1), atol=1e-4)


def test_a_foreign_file_needs_model_and_weights(exported):
    parent = exported("textbook_resnet18")
    proto = onnx.load(str(parent.path))
    with pytest.raises(BadInput, match="--model NAME"):
        plan_reference(parent.path, proto, None, None, None, False, 0)
    plan = plan_reference(parent.path, proto, None, "textbook_resnet18", None, False, 0)
    assert not plan.from_metadata and plan.input_size == 64 and plan.num_classes == 10
