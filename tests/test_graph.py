"""graph.py: what a file is, read from its graph."""

from __future__ import annotations

import pytest

from edgekit.core.errors import BadInput
from edgekit.onnxfile.graph import detect_precision, input_spec, output_classes, precision_of, static_batch
from tests.tiny_models import tiny_model


def test_input_spec_of_an_image_classifier():
    spec = input_spec(tiny_model())
    assert (spec.name, spec.batch, spec.chw, spec.dtype, spec.spatial) == ("input", 1, (3, 32, 32), "float32", 32)
    assert static_batch(tiny_model()) == 1 and output_classes(tiny_model()) == 10


@pytest.mark.parametrize(
    "model, message",
    [(lambda: tiny_model(inputs=2), r"2 input\(s\)"), (lambda: tiny_model(input_type="int64"), "int64 of rank 4")],
)
def test_other_signatures_are_refused_with_one_line(model, message):
    with pytest.raises(BadInput, match=message):
        input_spec(model(), "m.onnx")


def test_precision_from_metadata_else_from_the_graph():
    model = tiny_model()
    assert detect_precision(model) == "fp32" and precision_of(model, None) == "fp32"
    assert precision_of(model, {"precision": "int8"}) == "int8"
