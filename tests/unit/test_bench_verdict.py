"""bench's verdict (edgekit/bench/verdict.py) with fake runners: the fastest runtime whose outputs pass the file's
gates against ORT CPU's, never a faster one that computes something else, and its one line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.bench import verdict
from edgekit.judge.compare import DEFAULT_TOLERANCES
from tests.fakes import FakeRunner


@pytest.fixture
def fake_runtimes(monkeypatch):
    """open_runner gives a FakeRunner per (runtime, provider) from `behaviour`; OnnxFile.open a fp32 file's facts."""
    import edgekit.onnxfile
    from edgekit.runtimes import factory

    behaviour: dict[tuple[str, str], dict] = {}
    opened: list[FakeRunner] = []

    def open_runner(path, runtime="ort", provider="cpu", device=None, *, batch=None, **kw):
        runner = FakeRunner(input_shape=(batch, 3, 8, 8), runtime=runtime, requested=provider,
                            **behaviour.get((runtime, provider), {}))
        opened.append(runner)
        return runner

    source = SimpleNamespace(spec=SimpleNamespace(dtype="float32", chw=(3, 8, 8)), recipe=None,
                             gates=lambda: (DEFAULT_TOLERANCES["fp32"], "fp32 gates (atol 1e-4)"))
    monkeypatch.setattr(factory, "open_runner", open_runner)
    monkeypatch.setattr(edgekit.onnxfile, "OnnxFile", SimpleNamespace(open=lambda path, check=False: source))
    return SimpleNamespace(behaviour=behaviour, opened=opened)


def _timing(runtime: str, provider: str, p50: float, file: str = "/m/net.onnx"):
    return SimpleNamespace(kind="onnx", file=file, runtime=runtime, provider=provider, p50_ms=p50,
                           label=f"{Path(file).name} [{runtime} {provider}]")


def test_the_fastest_passing_runtime_wins_and_ort_cpu_is_the_reference(fake_runtimes):
    out = verdict.fastest_passing([_timing("ort", "cpu", 5.0), _timing("openvino", "cpu", 3.0)], batch=1, threads=1)
    v = out["net.onnx"]
    assert (v["fastest"], v["runtime"], v["p50_ms"]) == ("net.onnx [openvino cpu]", "openvino", 3.0)
    assert [c["passed"] for c in v["checked"]] == [True, True] and v["checked"][0]["reference"]
    assert v["samples"] == verdict.VERDICT_SAMPLES
    assert all(r.closed for r in fake_runtimes.opened)  # every runner it opened is closed
    line = verdict.verdict_line("net.onnx", v)
    assert line.startswith("fastest passing runtime for net.onnx on this CPU: openvino, p50 3.00 ms")
    assert "fp32 gates" in line and "\n" not in line


@pytest.mark.parametrize("broken", [{"nan_rows": (0,)}, {"noise": 0.5}, {"seed": 9}])
def test_a_faster_runtime_whose_outputs_fail_the_gates_is_never_the_verdict(fake_runtimes, broken):
    fake_runtimes.behaviour[("openvino", "cpu")] = broken
    out = verdict.fastest_passing([_timing("ort", "cpu", 5.0), _timing("openvino", "cpu", 1.0)], batch=1, threads=1)
    v = out["net.onnx"]
    assert v["fastest"] == "net.onnx [ort cpu]" and v["p50_ms"] == 5.0
    failed = v["checked"][1]
    assert not failed["passed"] and failed["failures"]
    line = verdict.verdict_line("net.onnx", v)
    assert "ort cpu, p50 5.00 ms (ORT CPU is the reference" in line and "failed the gates: net.onnx [openvino cpu]" in line


def test_the_inputs_are_fed_at_the_benched_batch(fake_runtimes):
    verdict.fastest_passing([_timing("ort", "cpu", 5.0), _timing("openvino", "cpu", 1.0)], batch=4, threads=1)
    assert [r.calls for r in fake_runtimes.opened] == [[4, 4], [4, 4]]  # 8 seeded samples, two batches of 4


def test_each_file_gets_its_own_verdict_and_a_file_nothing_passes_says_none(fake_runtimes):
    timings = [_timing("ort", "cpu", 5.0, "/m/a.onnx"), _timing("openvino", "cpu", 1.0, "/m/a.onnx"),
               _timing("ort", "cpu", 2.0, "/m/b.onnx"), SimpleNamespace(kind="torch", file=None)]
    out = verdict.fastest_passing(timings, batch=1, threads=1)
    assert sorted(out) == ["a.onnx", "b.onnx"]
    none = {"fastest": None, "checked": [{"label": "x [openvino cpu]", "passed": False, "failures": ["NaN"]}]}
    assert verdict.verdict_line("x.onnx", none) == ("fastest passing runtime for x.onnx on this CPU: none; failed the "
                                                    "gates: x [openvino cpu] (NaN)")
