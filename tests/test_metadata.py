"""The edgekit metadata object is untrusted input: schema, graph consistency, limits (edgekit/onnxfile/metadata.py,
edgekit/core/limits.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.core.errors import BadInput
from edgekit.core.limits import (
    MAX_CLASSES,
    MAX_INPUT_SIZE,
    MAX_METADATA_CHARS,
    MAX_SAMPLES,
    MAX_TENSOR_BYTES,
    check_count,
    check_dims,
    check_tensor_budget,
)
from edgekit.onnxfile.metadata import (
    METADATA_HINT,
    EdgekitMetadata,
    check_against_graph,
    metadata_of,
    parse_metadata,
    validate_metadata,
)
from edgekit.data.preprocessing import Preprocessing

WHERE = Path("models/r18.onnx")
SHA = "ab" * 32
RANDOM_INIT = "seeded init; BatchNorm statistics and classifier scale settled on the bundled calibration photos"


def export_metadata(size: int = 32, classes: int = 10, dynamic_batch: bool = False) -> dict:
    """The keys export._export_staged writes today, with values of the same types."""
    return {
        "schema": 1,
        "model": "textbook_resnet18",
        "family": "resnet",
        "source": "textbook",
        "num_classes": classes,
        "input_size": size,
        "input_shape": ["batch" if dynamic_batch else 1, 3, size, size],
        "dynamic_batch": dynamic_batch,
        "input_name": "input",
        "output_name": "logits",
        "weights": {"kind": "random", "seed": 0, "init": RANDOM_INIT},
        "preprocessing": Preprocessing.for_input_size(size).to_dict(),
        "opset": 17,
        "exporter": "torchscript",
        "simplified": True,
        "precision": "fp32",
        "versions": {"edgekit": "0.1.0", "torch": "2.14.1", "onnx": "1.23.2", "onnxsim": "unknown"},
        "created": "2026-11-28T12:00:00+00:00",
    }


def int8_metadata(parent: dict | None = None) -> dict:
    """What quantize writes: the parent's metadata plus precision, parent, calibration, recipe, report."""
    meta = {
        **(parent or {}),
        "precision": "int8",
        "parent": {"file": "r18.onnx", "sha256": SHA, "metadata": parent is not None},
        "calibration": {"source": "calibration", "kind": "images", "samples": 24, "sha256": SHA, "holdout_samples": 32},
        "recipe": {
            "target": "x86-avx2", "activation_type": "uint8", "weight_type": "int8", "per_channel": True,
            "reduce_range": True, "activation_symmetric": False, "method": "minmax", "reason": "u8s8 ...",
            "batchnorm_as_depthwise": True, "format": "QDQ", "excluded_nodes": ["/fc/Gemm"], "batchnorm_rewritten": 0,
            "session_options": {},
        },
        "versions": {"edgekit": "0.1.0"},
        "quantization_report": {
            "holdout_top1_agreement": 0.96875, "holdout_sqnr_db": float("inf"), "coverage_int8": 20, "coverage_total": 22,
            "gated_session_options": {}, "cpu": {"model": "x86", "flags": ["avx2"]},
            "holdout_sqnr_db_default_kernels": float("nan"), "holdout_top1_agreement_default_kernels": 0.5,
        },
    }
    if parent is None:
        meta["preprocessing"] = Preprocessing.for_input_size(32).to_dict()
    return meta


def raw(meta) -> str:
    return json.dumps(meta, sort_keys=True)  # exactly as artifact.write_metadata serialises it


def refused(meta_or_raw) -> str:
    text = meta_or_raw if isinstance(meta_or_raw, str) else raw(meta_or_raw)
    with pytest.raises(BadInput) as info:
        parse_metadata(text, WHERE)
    message = str(info.value)
    assert "\n" not in message
    assert str(WHERE) in message and info.value.hint == METADATA_HINT
    return message


# --- what edgekit writes parses and round-trips --------------------------------------------------


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_export_metadata_parses_and_round_trips(dynamic_batch):
    meta = export_metadata(dynamic_batch=dynamic_batch)
    parsed = parse_metadata(raw(meta), WHERE)
    assert isinstance(parsed, EdgekitMetadata)
    assert parsed.model == "textbook_resnet18" and parsed.num_classes == 10 and parsed.weights.seed == 0
    assert parsed.schema_version == 1 and parsed.precision == "fp32" and parsed.has_provenance
    assert parsed.preprocessing_spec() == Preprocessing.for_input_size(32)
    assert parsed.weights.to_dict()["seed"] == 0
    assert raw(parsed.to_dict()) == raw(meta)


def test_int8_metadata_parses_and_round_trips():
    meta = int8_metadata(export_metadata())
    parsed = parse_metadata(raw(meta), WHERE)
    assert parsed.precision == "int8" and parsed.parent.metadata is True
    assert parsed.recipe.excluded_nodes == ["/fc/Gemm"] and parsed.quantization_report.holdout_sqnr_db == float("inf")
    assert raw(parsed.to_dict()) == raw(meta)


def test_int8_of_a_foreign_file_has_no_model_provenance():
    parsed = parse_metadata(raw(int8_metadata(None)), WHERE)
    assert not parsed.has_provenance and parsed.model is None and parsed.weights is None
    assert "model" not in parsed.to_dict()


def test_int8_from_before_the_batchnorm_rewrite_still_parses():
    meta = int8_metadata(export_metadata())
    del meta["recipe"]["batchnorm_as_depthwise"], meta["recipe"]["batchnorm_rewritten"]
    assert parse_metadata(raw(meta), WHERE).recipe.batchnorm_rewritten is None


def test_first_preprocessing_form_is_still_read():
    meta = export_metadata()
    meta["preprocessing"] = {"resize": 37, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                             "channel_order": "RGB", "layout": "NCHW", "interpolation": "bilinear"}
    assert parse_metadata(raw(meta), WHERE).preprocessing_spec().channels == "rgb"


def test_unknown_keys_are_kept_but_change_nothing():
    meta = export_metadata()
    meta["added_by_edgekit_2"] = {"x": [1, 2]}
    meta["weights"]["future_field"] = "y"
    meta["model_dump"] = "not a method"  # an extra key never shadows the model's own attributes
    parsed = parse_metadata(raw(meta), WHERE)
    assert raw(parsed.to_dict()) == raw(meta)
    assert parsed.precision == "fp32" and callable(parsed.model_dump)


def test_a_foreign_file_has_no_metadata():
    assert parse_metadata(None, WHERE) is None


def test_freshly_exported_file_validates(tmp_path):
    import onnx

    from edgekit.export import export

    out = tmp_path / "r18.onnx"
    export("textbook_resnet18", input_size=32, output=out)
    model = onnx.load(str(out))
    stored = [p.value for p in model.metadata_props if p.key == "edgekit"]
    assert len(stored) == 1
    meta = parse_metadata(stored[0], out)
    assert meta.input_size == 32 and meta.model == "textbook_resnet18" and meta.precision == "fp32"
    assert meta.to_dict() == json.loads(stored[0])
    assert metadata_of(model, out) == meta

    def dims(value_info):
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim]

    check_against_graph(meta, dims(model.graph.input[0]), dims(model.graph.output[0]), out)


# --- everything else is one BadInput line naming the field ---------------------------------------


def _set(path: str, value):
    def mutate(meta):
        *parents, last = path.split(".")
        target = meta
        for key in parents:
            target = target[key]
        target[last] = value
    return mutate


def _drop(key: str):
    return lambda meta: meta.pop(key)


BAD = [
    ("seed as a string", _set("weights.seed", "3"), "weights.seed is \"3\""),
    ("negative seed", _set("weights.seed", -1), "weights.seed is -1"),
    ("float seed", _set("weights.seed", 3.0), "weights.seed is 3.0"),
    ("model as a number", _set("model", 5), "model is 5"),
    ("empty model", _set("model", ""), "model is \"\""),
    ("no classes", _set("num_classes", 0), "num_classes is 0"),
    ("a billion classes", _set("num_classes", 10**9), "num_classes is 1000000000"),
    ("classes as bool", _set("num_classes", True), "num_classes is true"),
    ("huge input", _set("input_size", 10**6), "input_size is 1000000"),
    ("zero std", _set("preprocessing.std", [0, 0, 0]), "preprocessing.std"),
    ("preprocessing not an object", _set("preprocessing", [1, 2]), "preprocessing"),
    ("crop is not the input size", _set("preprocessing.crop", 30), "preprocessing.crop is 30"),
    ("unknown weights kind", _set("weights", {"kind": "magic", "seed": 1}), "weights.kind is \"magic\""),
    ("weights without kind", _set("weights", {"seed": 1}), "weights.kind is missing"),
    ("weights as a string", _set("weights", "random"), "weights is \"random\""),
    ("file weights with a short sha", _set("weights", {"kind": "file", "path": "w.pt", "sha256": "abc"}), "weights.sha256"),
    ("missing model", _drop("model"), "model is missing"),
    ("missing weights", _drop("weights"), "weights is missing"),
    ("missing precision", _drop("precision"), "precision is missing"),
    ("missing preprocessing", _drop("preprocessing"), "preprocessing is missing"),
    ("unknown precision", _set("precision", "int4"), "precision is \"int4\""),
    ("opset too old", _set("opset", 3), "opset is 3"),
    ("opset as a string", _set("opset", "17"), "opset is \"17\""),
    ("simplified as 1", _set("simplified", 1), "simplified is 1"),
    ("null value", _set("exporter", None), "exporter is null"),
    ("newer schema", _set("schema", 2), "schema is 2"),
    ("shape of rank 3", _set("input_shape", [1, 3, 32]), "input_shape"),
    ("shape not the input size", _set("input_shape", [1, 3, 32, 64]), "input_shape[3] is 64"),
    ("dynamic batch with a number", _set("dynamic_batch", True), "input_shape[0] is 1"),
    ("batch of a million", _set("input_shape", [10**6, 3, 32, 32]), "input_shape[0] is 1000000"),
    ("gray shape for rgb preprocessing", _set("input_shape", [1, 1, 32, 32]), "input_shape[1] is 1"),
    ("versions not strings", _set("versions", {"torch": 2}), "versions.torch is 2"),
    ("created not a time", _set("created", "yesterday"), "created is \"yesterday\""),
    ("int8 without parent", _set("precision", "int8"), "parent is missing"),
]


@pytest.mark.parametrize("mutate, expected", [pytest.param(m, e, id=name) for name, m, e in BAD])
def test_bad_metadata_names_the_field_and_value(mutate, expected):
    meta = export_metadata()
    mutate(meta)
    message = refused(meta)
    assert f"field {expected}" in message


@pytest.mark.parametrize("mutate, expected", [
    pytest.param(_set("recipe.excluded_nodes", "/fc/Gemm"), "recipe.excluded_nodes is \"/fc/Gemm\"", id="exclusions not a list"),
    pytest.param(_set("recipe.excluded_nodes", ["a", 3]), "recipe.excluded_nodes[1] is 3", id="exclusion not a string"),
    pytest.param(_set("calibration.samples", 0), "calibration.samples is 0", id="no calibration samples"),
    pytest.param(_set("calibration.samples", MAX_SAMPLES + 1), "calibration.samples", id="too many samples"),
    pytest.param(_set("parent.sha256", "Z" * 64), "parent.sha256", id="parent sha not hex"),
    pytest.param(_set("quantization_report.holdout_top1_agreement", 1.5), "quantization_report.holdout_top1_agreement is 1.5", id="agreement > 1"),
    pytest.param(_set("quantization_report.holdout_top1_agreement", float("nan")), "quantization_report.holdout_top1_agreement is NaN", id="agreement NaN"),
    pytest.param(_drop("recipe"), "recipe is missing", id="int8 without recipe"),
])
def test_bad_int8_metadata_names_the_field(mutate, expected):
    meta = int8_metadata(export_metadata())
    mutate(meta)
    assert f"field {expected}" in refused(meta)


def test_shown_values_are_truncated():
    meta = export_metadata()
    meta["weights"]["seed"] = "9" * 500
    message = refused(meta)
    assert "weights.seed" in message and "9" * 60 not in message and "..." in message


@pytest.mark.parametrize("text, expected", [
    pytest.param("{", "not valid JSON", id="malformed"),
    pytest.param('{"model": "r18",}', "not valid JSON", id="trailing comma"),
    pytest.param("[1, 2]", "is a list, not a JSON object", id="a list"),
    pytest.param('"fp32"', "is a string, not a JSON object", id="a string"),
    pytest.param("42", "is a number, not a JSON object", id="a number"),
    pytest.param("null", "is null, not a JSON object", id="null"),
    pytest.param('{"model": "a", "model": "b"}', 'the key "model" twice', id="duplicate key"),
    pytest.param("[" * 100_000, "nested too deeply", id="deep nesting"),
    pytest.param("1" * 5000, "not valid JSON", id="5000-digit number"),
])
def test_malformed_json_is_refused(text, expected):
    assert expected in refused(text)


def test_oversized_metadata_is_refused_before_parsing():
    assert "over edgekit's limit" in refused(" " * (MAX_METADATA_CHARS + 1))


def test_validate_metadata_takes_a_decoded_dict():
    assert validate_metadata(export_metadata(), WHERE).model == "textbook_resnet18"
    with pytest.raises(BadInput, match="is a list"):
        validate_metadata([export_metadata()], WHERE)


def test_two_metadata_entries_are_refused():
    import onnx

    model = onnx.ModelProto()
    for _ in range(2):
        entry = model.metadata_props.add()
        entry.key, entry.value = "edgekit", raw(export_metadata())
    with pytest.raises(BadInput, match="2 edgekit metadata entries"):
        metadata_of(model, WHERE)
    assert metadata_of(onnx.ModelProto(), WHERE) is None


# --- the metadata against the graph ----------------------------------------------------------------


def _meta(**changes) -> EdgekitMetadata:
    meta = export_metadata(**changes)
    return parse_metadata(raw(meta), WHERE)


def test_consistent_graph_passes():
    check_against_graph(_meta(), [1, 3, 32, 32], [1, 10], WHERE)
    check_against_graph(_meta(dynamic_batch=True), ["batch", 3, 32, 32], ["batch", 10], WHERE)
    check_against_graph(_meta(), [1, 3, None, None], [1, None], WHERE)  # unknown dims are not compared


@pytest.mark.parametrize("meta, graph_in, graph_out, expected", [
    pytest.param(_meta(size=64), [1, 3, 32, 32], [1, 10], ["input_size is 64", "height 32"], id="input size"),
    pytest.param(_meta(), [1, 1, 32, 32], [1, 10], ["1 channel(s), not 3"], id="channels"),
    pytest.param(_meta(), [1, 3, 32, 32], [1, 1000], ["num_classes is 10", "1000 classes"], id="classes"),
    pytest.param(_meta(), [4, 3, 32, 32], [4, 10], ["input_shape[0] is 1", "batch 4"], id="batch"),
    pytest.param(_meta(dynamic_batch=True), [1, 3, 32, 32], [1, 10], ["dynamic_batch is true", "fixed batch of 1"],
                 id="dynamic batch"),
    pytest.param(_meta(), [1, 3, 32], [1, 10], ["(1, 3, 32)"], id="rank"),
])
def test_graph_disagreement_names_both_values(meta, graph_in, graph_out, expected):
    with pytest.raises(BadInput) as info:
        check_against_graph(meta, graph_in, graph_out, WHERE)
    assert str(WHERE) in str(info.value) and info.value.exit_code == 2
    for part in expected:
        assert part in str(info.value)


def test_crop_larger_than_the_graph_input_is_refused():
    # A file quantized from a foreign parent records only its preprocessing: the crop is all there is to check.
    meta = int8_metadata(None)
    meta["preprocessing"] = Preprocessing.for_input_size(64).to_dict()
    parsed = parse_metadata(raw(meta), WHERE)
    with pytest.raises(BadInput, match=r"preprocessing.crop is 64, but the graph's input \(1, 3, 32, 32\) has height 32"):
        check_against_graph(parsed, [1, 3, 32, 32], [1, 10], WHERE)


def test_gray_preprocessing_expects_one_channel():
    meta = export_metadata()
    meta["preprocessing"] = {**meta["preprocessing"], "channels": "gray", "input_channels": 1, "mean": [0.5], "std": [0.25]}
    meta["input_shape"] = [1, 1, 32, 32]
    parsed = parse_metadata(raw(meta), WHERE)
    assert parsed.input_channels == 1
    check_against_graph(parsed, [1, 1, 32, 32], [1, 10], WHERE)
    with pytest.raises(BadInput, match="3 channel"):
        check_against_graph(parsed, [1, 3, 32, 32], [1, 10], WHERE)


# --- fuzz: anything in, a model or BadInput out --------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
KEYS = sorted(export_metadata()) + ["parent", "calibration", "recipe", "quantization_report", "__class__", "_x"]


def _outcome(text: str):
    try:
        result = parse_metadata(text, WHERE)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return exc
    assert isinstance(result, EdgekitMetadata)
    result.to_dict()
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_fuzz_any_json_value(value):
    _outcome(json.dumps(value))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(["weights", "preprocessing", None]), JSON),
                min_size=1, max_size=4),
       st.sampled_from(["fp32", "int8"]))
def test_fuzz_valid_metadata_with_values_replaced(changes, precision):
    meta = export_metadata() if precision == "fp32" else int8_metadata(export_metadata())
    for key, inner, value in changes:
        if inner is not None and isinstance(meta.get(inner), dict):
            meta[inner] = {**meta[inner], key: value}
        else:
            meta[key] = value
    _outcome(json.dumps(meta))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_any_text(text):
    _outcome(text)


# --- limits -----------------------------------------------------------------------------------------


def test_tensor_budget_refuses_before_allocating():
    started = time.perf_counter()
    with pytest.raises(BadInput) as info:
        check_tensor_budget((100_000, 3, 224, 224), 4, "--random-inputs")
    assert str(info.value).startswith(
        "--random-inputs 100000 x (3, 224, 224) float32 is 60.2 GB, over edgekit's 2 GiB limit for one tensor"
    )
    with pytest.raises(BadInput, match="over edgekit's 2 GiB limit"):
        check_tensor_budget((10**30, 10**30, 3), 4, "a file's input")  # no MemoryError, no overflow
    assert time.perf_counter() - started < 1.0


def test_tensor_budget_passes_what_fits():
    assert check_tensor_budget((32, 3, 224, 224), 4, "--samples") == 32 * 3 * 224 * 224 * 4
    assert check_tensor_budget((MAX_TENSOR_BYTES,), 1, "bytes") == MAX_TENSOR_BYTES


@pytest.mark.parametrize("shape, expected", [
    ((1, 0, 32), "dimension 1 is 0"),
    ((1, -3, 32), "dimension 1 is -3"),
    ((1, None, 32), "dimension 1 is None, not a fixed size"),
    ((1, "batch", 32), "dimension 1 is 'batch', not a fixed size"),
    ((1, True, 32), "dimension 1 is True"),
    ((1, 2.5, 32), "dimension 1 is 2.5"),
])
def test_tensor_budget_refuses_invalid_dims(shape, expected):
    with pytest.raises(BadInput, match=expected.replace("(", r"\(")):
        check_tensor_budget(shape, 4, "shape")


def test_check_dims():
    assert check_dims([1, 3, 32, 32], "graph input") == (1, 3, 32, 32)
    with pytest.raises(BadInput, match="dimension 2 is 5000, over edgekit's limit of 4,096"):
        check_dims([1, 3, 5000, 5000], "graph input", bound=MAX_INPUT_SIZE)
    with pytest.raises(BadInput, match="over edgekit's limit of 100,000"):
        check_dims([1, MAX_CLASSES + 1], "graph output")
    with pytest.raises(BadInput, match="not a fixed size"):
        check_dims(["batch", 3, 32, 32], "graph input")


def test_check_count():
    assert check_count(24, "--samples", MAX_SAMPLES) == 24
    with pytest.raises(BadInput, match="--samples 1000000 is over edgekit's limit of 100,000"):
        check_count(10**6, "--samples", MAX_SAMPLES)
    with pytest.raises(BadInput, match="at least 1"):
        check_count(0, "--samples", MAX_SAMPLES)
    with pytest.raises(BadInput, match="whole number"):
        check_count("3", "--samples", MAX_SAMPLES)


DIM = st.none() | st.booleans() | st.integers(-2, 2**40) | st.sampled_from([1, 3, 10, 32, 64]) | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(DIM, max_size=6), st.lists(DIM, max_size=3), st.booleans())
def test_fuzz_graph_dims(graph_in, graph_out, dynamic_batch):
    meta = _meta(dynamic_batch=dynamic_batch)
    try:
        check_against_graph(meta, graph_in, graph_out, WHERE)
    except BadInput as exc:
        assert "\n" not in str(exc)
