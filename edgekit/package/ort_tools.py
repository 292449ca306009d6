"""ONNX Runtime's own tools, wrapped: conversion to the ORT format (for ORT Mobile and minimal builds)
and the mobile usability checker (NNAPI / CoreML partitions). Their prints and logs never reach stdout."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.core.errors import CheckFailed, one_line

ORT_OPTIMIZATION_STYLE = "Fixed"


def convert_to_ort(onnx_files: list[Path], workdir: Path, arm: bool,
                   session_config: dict[str, str] | None = None) -> tuple[Path, Path]:
    """onnxruntime.tools.convert_onnx_models_to_ort on a copy (fixed optimisations, NCHWc excluded: portable),
    in a subprocess: its prints, its logging and ORT's C++ log stay out of this process.

    `session_config`: entries the file needs on every CPU, added to the tool's own session config. The ORT
    format keeps the graph as optimised at conversion, so an option that steers an optimizer (nodes kept in
    float must not be quantized again) has effect only if the conversion sets it."""
    src = workdir / "src"
    out = workdir / "out"
    src.mkdir()
    for path in onnx_files:
        shutil.copyfile(path, src / path.name)
    model = src / onnx_files[0].name
    args = ["--optimization_style", ORT_OPTIMIZATION_STYLE, "--output_dir", str(out)]
    if arm:
        args += ["--target_platform", "arm"]
    # onnxruntime.tools imports torch when it can (3 s here) and does not need it to convert: block it.
    bootstrap = (
        "import sys, json; sys.modules['torch'] = None\n"
        "import onnxruntime.tools.convert_onnx_models_to_ort as tool\n"
        "extra, sys.argv = json.loads(sys.argv[1]), ['convert_onnx_models_to_ort'] + sys.argv[2:]\n"
        "convert = tool._convert\n"
        "def with_extra(**kw):\n"
        "    kw['session_options_config_entries'] = {**kw['session_options_config_entries'], **extra}\n"
        "    return convert(**kw)\n"
        "tool._convert = with_extra\n"
        "a = tool.parse_args()\n"
        "tool.convert_onnx_models_to_ort(a.model_path_or_dir, output_dir=a.output_dir, "
        "optimization_styles=a.optimization_style, target_platform=a.target_platform)\n"
    )
    proc = subprocess.run([sys.executable, "-c", bootstrap, json.dumps(session_config or {}), *args, str(model)],
                          capture_output=True, text=True)
    ort_file = out / (model.name[: -len(".onnx")] + ".ort")
    configs = sorted(out.glob("*.config"))
    if proc.returncode != 0 or not ort_file.is_file() or not configs:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "no output")
        raise CheckFailed(f"converting {onnx_files[0].name} to the ORT format failed: {reason[:300]}")
    return ort_file, configs[0]


def ort_left_out_because(session_options: dict) -> str | None:
    """Why a bundle holds no .ort for a file with these per-CPU session options (None: it holds one).

    The ORT format stores the graph as ONNX Runtime optimised it at conversion, on the packaging machine: an
    option that changes how a CPU's optimizer rewrites the int8 graph (session.x64quantprecision, the S8->U8
    rewrites) cannot reach into it on the device. Measured on an AVX2 CPU (issue 18): such an .ort read 11.5 dB
    where its .onnx with the manifest's option read 22.4 dB. A bundle never holds a format that computes
    differently from the file that was verified."""
    from edgekit.judge.targets import ANY_CPU

    per_cpu = sorted(kind for kind in session_options if kind != ANY_CPU)
    if not per_cpu:
        return None
    return (f"this file needs session options on {', '.join(per_cpu)} CPUs that change how ONNX Runtime's optimizer "
            "rewrites it, and an .ort keeps the graph as optimised on the packaging machine, so it would compute "
            "differently there; use the .onnx (or convert it on the device itself: python -m "
            "onnxruntime.tools.convert_onnx_models_to_ort MODEL.onnx)")


def portable_ops_config(config: Path, ort_name: str) -> str:
    """The tool's config with its temp path replaced by the bundle's .ort name."""
    lines = config.read_text().splitlines()
    fixed = [f"# - {ort_name}" if line.startswith("# - ") else line for line in lines]
    return "\n".join(fixed) + "\n"


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def mobile_usability(path: Path) -> tuple[dict, str]:
    """ORT Mobile usability (onnxruntime.tools.check_onnx_model_mobile_usability's checker): NNAPI and CoreML
    partitions, per EP, and the verdict; its log captured, never printed. ({'available': False, ...} when the
    tool cannot run here.)"""
    logger = logging.getLogger("edgekit.package.ort_tools.mobile_usability")
    handler = _ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)  # ORT's tools call logging.basicConfig() on import: with a handler there, it does nothing
    try:
        from onnxruntime.tools.mobile_helpers import usability_checker as uc
        from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

        eps = {
            "NNAPI": lambda m, fixed: uc.check_nnapi_partitions(m, fixed),
            "CoreML NeuralNetwork": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md"),
            "CoreML MLProgram": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
        }
        summary: dict = {"available": True, "tool": "onnxruntime.tools.check_onnx_model_mobile_usability", "eps": {}}
        with tempfile.TemporaryDirectory(prefix="edgekit-mobile-") as tmp:
            optimized = Path(tmp) / path.name  # as the tool does: ORT's basic optimisations first
            optimize_model(path, optimized, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
            dynamic_inputs, _ = uc.check_shapes(model.graph)
            for ep, check in eps.items():
                logger.info(f"Checking {ep}")
                info = check(model, True)
                info.print_analysis(logger, ep)
                suitability = info.suitability()
                entry = {
                    "partitions": int(info.num_partitions), "supported_nodes": int(info.num_supported_nodes),
                    "nodes": int(info.num_nodes), "unsupported_ops": sorted(info.unsupported_ops),
                    "suitability": suitability.name,
                }
                if suitability != uc.PartitioningInfo.TryWithEP.YES and dynamic_inputs:
                    fixed = check(model, False)
                    entry["suitability_with_fixed_shapes"] = fixed.suitability().name
                    entry["partitions_with_fixed_shapes"] = int(fixed.num_partitions)
                logger.info(f"Model should perform well with {ep} as is: {suitability.name}")
                summary["eps"][ep] = entry
        try_eps = any(e["suitability"] != "NO" or e.get("suitability_with_fixed_shapes", "NO") != "NO"
                      for e in summary["eps"].values())
        summary["try_nnapi_or_coreml"] = try_eps
        summary["verdict"] = (
            "NNAPI or CoreML may help: compare them with the CPU EP on the device" if try_eps
            else "use the CPU EP: NNAPI and CoreML would split the model into too many partitions"
        )
        logger.info(summary["verdict"])
    except Exception as exc:  # an ORT without the tools, or a graph the checker cannot read: say so, do not fail
        summary = {"available": False, "reason": one_line(exc, 300)}
        handler.lines.append(f"mobile usability check unavailable: {one_line(exc, 300)}")
    finally:
        root.removeHandler(guard)
        logger.removeHandler(handler)
    return summary, "\n".join(handler.lines) + "\n"
