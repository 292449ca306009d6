"""runtimes/ort.py: provider names, no silent fallback, node placement from ORT profiling, input checks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.core.errors import BadInput, ProviderUnavailable
from edgekit.runtimes.ort import (
    PROVIDERS,
    Session,
    check_inputs,
    create_session,
    cuda_device_available,
    parse_providers,
    placement_from_trace,
)

NO_CUDA = "no CUDA device visible to this process (torch.cuda.is_available() is False)"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten: (1, 3, 8, 8) -> (1, 4), built with onnx.helper."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["logits"], name="flatten"),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("runtime") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_parse_providers():
    assert parse_providers("cpu,cuda") == ["cpu", "cuda"]
    assert parse_providers(" CUDA , cpu,cuda") == ["cuda", "cpu"]
    assert parse_providers("CUDAExecutionProvider") == ["cuda"]
    assert parse_providers("tensorrt") == ["tensorrt"]
    assert parse_providers(None) == (["cpu", "cuda"] if cuda_device_available() else ["cpu"])


def test_unknown_provider_is_bad_input_naming_it():
    with pytest.raises(BadInput, match="unknown execution provider 'rocm'") as info:
        parse_providers("cpu,rocm")
    assert info.value.exit_code == 2 and "cpu, cuda, tensorrt" in str(info.value)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_provider_that_does_not_start_is_exit_3_not_a_silent_cpu_run(provider, tiny_model, capfd):
    if cuda_device_available():
        pytest.skip("a CUDA device is visible: the provider may well start here")
    with pytest.raises(ProviderUnavailable) as info:
        create_session(tiny_model, provider)
    assert info.value.exit_code == 3
    assert f"{provider.upper()} did not start" in str(info.value)
    assert "--allow-fallback" in str(info.value)
    out, _err = capfd.readouterr()
    assert "EP Error" not in out  # ORT's print()ed fallback banner stays off edgekit's stdout


def test_allowed_fallback_says_where_it_ran(tiny_model, capfd):
    if cuda_device_available():
        pytest.skip("a CUDA device is visible: CUDA would not fall back")
    session = create_session(tiny_model, "cuda", allow_fallback=True)
    assert session.fell_back and session.requested == "cuda" and session.ran_on == "cpu"
    assert session.providers == ["CPUExecutionProvider"]
    assert "CUDA" in session.reason
    out = session.run({"input": np.zeros((1, 3, 8, 8), np.float32)})[0]
    assert out.shape == (1, 4)
    assert "EP Error" not in capfd.readouterr().out


def test_tensorrt_that_falls_back_to_cuda_ran_on_cuda():
    # TensorRT's chain is TensorRT -> CUDA -> CPU: where it landed is what ORT reports first.
    session = Session(object(), "tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"], fell_back=True)
    assert session.ran_on == "cuda"
    assert Session(object(), "cuda", ["CPUExecutionProvider"], fell_back=True).ran_on == "cpu"
    started = Session(object(), "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], fell_back=False)
    assert started.ran_on == "cuda"


def test_node_placement_from_profiling_and_no_trace_left_behind(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's default is to write the trace into the working directory
    before = set(os.listdir(tempfile.gettempdir()))
    session = create_session(tiny_model, "cpu", enable_profiling=True)
    session.run({"input": np.ones((1, 3, 8, 8), np.float32)})
    placement = session.node_placement()
    assert set(placement) == {"cpu"}
    assert sum(placement["cpu"].values()) >= 2  # ORT fuses Conv+Relu; what is left all ran on CPU
    assert "Flatten" in placement["cpu"] or "Reshape" in placement["cpu"]
    assert os.listdir(tmp_path) == []
    assert not [f for f in set(os.listdir(tempfile.gettempdir())) - before if f.startswith("edgekit-profile")]
    assert session.node_placement() == {}  # profiling ended; a second call reads nothing


def test_placement_from_trace_counts_distinct_nodes_per_provider():
    def node(name, provider, op, suffix="kernel_time"):
        return {"cat": "Node", "name": f"{name}_{suffix}", "args": {"provider": provider, "op_name": op}}

    events = [
        {"cat": "Session", "name": "model_loading_uri", "args": {}},
        node("conv1", "CUDAExecutionProvider", "Conv"),
        node("conv1", "CUDAExecutionProvider", "Conv", "fence_before"),
        node("conv1", "CUDAExecutionProvider", "Conv"),  # a second run of the same node
        node("conv2", "CUDAExecutionProvider", "Conv"),
        node("memcpy", "CUDAExecutionProvider", "MemcpyToHost"),
        node("topk", "CPUExecutionProvider", "TopK"),
        {"cat": "Node", "name": "no_provider", "args": {}},
    ]
    assert placement_from_trace(events) == {"cuda": {"Conv": 2, "MemcpyToHost": 1}, "cpu": {"TopK": 1}}


def test_inputs_are_checked_by_name_shape_and_dtype(tiny_model):
    session = create_session(tiny_model, "cpu").session
    check_inputs(session, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(BadInput, match=r"input 'input' has shape \(1, 3, 9, 9\); the model expects \(1, 3, 8, 8\)"):
        check_inputs(session, {"input": np.zeros((1, 3, 9, 9), np.float32)})
    with pytest.raises(BadInput, match=r"input 'input' has dtype float64; the model expects float32"):
        check_inputs(session, {"input": np.zeros((1, 3, 8, 8), np.float64)})
    with pytest.raises(BadInput, match=r"model inputs are \['input'\]; got \['x'\]"):
        check_inputs(session, {"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_provider_names_are_ort_names():
    assert PROVIDERS == {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }


@pytest.mark.cuda
def test_cuda_session_runs_its_nodes_on_cuda(tiny_model):
    if not cuda_device_available():
        pytest.skip(NO_CUDA)
    session = create_session(tiny_model, "cuda", enable_profiling=True, provider_options={"use_tf32": "0"})
    assert not session.fell_back and session.providers[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = session.run({"input": x})[0]
    want = create_session(tiny_model, "cpu").run({"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    placement = session.node_placement()
    assert "cuda" in placement and placement["cuda"].get("Conv", 0) + placement["cuda"].get("FusedConv", 0) >= 1
