"""Tiny ONNX files made with onnx.helper, for tests that need a file in seconds rather than an export:
Conv + GlobalAveragePool + Flatten on a (1, 3, 32, 32) input, and variants of an unusual signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = 32
CLASSES = 10
RANDOM_INIT = "seeded init; BatchNorm statistics and classifier scale settled on the bundled calibration photos"


def tiny_model(*, inputs: int = 1, input_type: str = "float32", classes: int = CLASSES, size: int = SIZE,
               metadata: dict | str | None = None):
    """The ModelProto; `metadata` (a dict, or a raw string stored as is) goes under the `edgekit` key."""
    from onnx import TensorProto, helper, numpy_helper

    elem = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "float16": TensorProto.FLOAT16}[input_type]
    weight = np.random.default_rng(0).standard_normal((classes, 3, 3, 3)).astype(np.float32) * 0.1
    graph_inputs = [helper.make_tensor_value_info("input", elem, [1, 3, size, size])]
    nodes = []
    x = "input"
    if input_type != "float32":
        nodes.append(helper.make_node("Cast", [x], ["input_f"], to=TensorProto.FLOAT))
        x = "input_f"
    if inputs == 2:
        graph_inputs.append(helper.make_tensor_value_info("input2", TensorProto.FLOAT, [1, 3, size, size]))
        nodes.append(helper.make_node("Add", [x, "input2"], ["summed"]))
        x = "summed"
    nodes += [
        helper.make_node("Conv", [x, "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["logits"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", graph_inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key = "edgekit"
        entry.value = metadata if isinstance(metadata, str) else json.dumps(metadata, sort_keys=True)
    return model


def write_tiny(path: Path, **kwargs) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_model(**kwargs), str(path))
    return path


def tiny_metadata(size: int = SIZE, classes: int = CLASSES) -> dict:
    """Valid edgekit metadata describing the tiny graph (as textbook_resnet18: its weights differ, so a
    verify of it fails its gates, exit 1, but everything up to the comparison runs)."""
    from edgekit.data.preprocessing import Preprocessing

    return {
        "schema": 1, "model": "textbook_resnet18", "family": "resnet", "source": "textbook",
        "num_classes": classes, "input_size": size, "input_shape": [1, 3, size, size], "dynamic_batch": False,
        "input_name": "input", "output_name": "logits",
        "weights": {"kind": "random", "seed": 0, "init": RANDOM_INIT},
        "preprocessing": Preprocessing.for_input_size(size).to_dict(),
        "opset": 17, "exporter": "torchscript", "simplified": True, "precision": "fp32",
        "versions": {"edgekit": "0.1.0"}, "created": "2026-11-28T12:00:00+00:00",
    }
