"""Bring your own model, end to end: files nobody here exported through edgekit's whole path, one table.

For each model of the corpus (tests/foreign_models.py: torchvision classifiers outside the zoo through TorchScript,
a dynamo export with external data, an onnxsim'd file, a Paddle-style opset-11 file with Constant weights and a
dynamic H x W input, a dense-output model, and a user's own nn.Module), it runs what a user would, through the
real CLI, and records each command's exit code and the first line it said:

    import (or export file.py:factory) -> quantize -> verify -> package -> the bundle's check.py in a bare
    numpy+onnxruntime venv -> verify --device arm64-a76

    python -m benchmarks.byom --out benchmarks/BYOM.md [--bare-python /tmp/bare/bin/python] [--no-device]

The bare venv is one with only numpy, onnxruntime (the CPU package) and pillow: `python3 -m venv /tmp/bare &&
/tmp/bare/bin/pip install onnxruntime==1.31.1 numpy pillow`. The arm64 device needs `edgekit devices setup arm64`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

EDGEKIT = [sys.executable, "-m", "edgekit"]
TORCHVISION = ("mobilenet_v3_small", "regnet_y_400mf", "shufflenet_v2_x1_0", "efficientnet_b0", "convnext_tiny")


def _run(cmd: list[str], cwd: Path, timeout: int = 900, keep_stdout: bool = False) -> dict:
    started = time.perf_counter()
    env = {**os.environ, "EDGEKIT_NO_PROGRESS": "1"}
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        code, out, err = "timeout", "", f"no answer within {timeout} s"
    lines = [" ".join(ln.replace("│", " ").split()) for ln in (err or "").splitlines() + (out or "").splitlines()]
    said = (next((ln for ln in lines if ln.startswith(("error", "FAIL", "PASS"))), None)
            or next((ln for ln in lines if ln.startswith(("wrote", "gates", "changes", "check", "note"))), None)
            or next((ln for ln in lines if ln), ""))
    traceback = "Traceback (most recent call last)" in (out or "") + (err or "")
    return {"cmd": " ".join(str(c) for c in cmd[2:] if c != "-m"), "exit": code, "said": said[:200],
            "traceback": traceback, "seconds": round(time.perf_counter() - started, 1)} | (
                {"stdout": out or ""} if keep_stdout else {})


def makers() -> dict[str, tuple[str, object, list[str] | None]]:
    """{name: (sub-folder, builder(folder) -> source path, import options | None (export a user module))}."""
    import foreign_models as fm

    paddle = ["--untrained", "--input-shape", "1,3,32,96", "--crop", "32x96", "--resize", "letterbox", "--channels",
              "bgr", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    made: dict[str, tuple[str, object, list[str] | None]] = {
        name: (name, lambda folder, name=name: fm.torchvision_torchscript(folder, name, 64), ["--untrained"])
        for name in TORCHVISION
    }
    made["mobilenet_v3_small (dynamo, external data)"] = ("dynamo", fm.torchvision_dynamo, ["--untrained"])
    made["view+Linear after onnxsim"] = ("onnxsim", fm.onnxsim_file, ["--untrained"])
    made["Paddle-style opset 11 (Constant weights, dynamic HxW)"] = ("paddle", fm.paddle_style_opset11, paddle)
    made["dense output (a detector's map)"] = ("dense", fm.dense_output, ["--untrained"])
    made["user module mynet.py:build"] = ("user", fm.user_module_source, None)
    return made


def corpus(tmp: Path, only: str | None = None) -> dict[str, dict]:
    """{name: {"source": path, "import": extra import options | None (export a user module)}}, building only the
    models whose name contains one of `only`'s comma-separated substrings (all when None): a large model is
    exported only when asked for."""
    items: dict[str, dict] = {}
    for name, (sub, make, options) in makers().items():
        if only and not any(s in name for s in only.split(",")):
            continue
        folder = tmp / sub
        folder.mkdir()
        items[name] = {"source": make(folder), "import": options}
    return items


def one_model(name: str, item: dict, work: Path, bare_python: str | None, device: bool) -> list[dict]:
    source: Path = item["source"]
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    if item["import"] is None:
        fp32 = out / "mynet.onnx"
        spec = f"{source}:build"
        steps.append(_run([*EDGEKIT, "export", spec, "--input-size", "64", "-o", fp32], work))
        model_args = ["--model", spec]
    else:
        fp32 = out / f"{source.stem}.onnx"
        steps.append(_run([*EDGEKIT, "import", source, *item["import"], "-o", fp32], work))
        model_args = []
    int8 = out / f"{fp32.stem}.int8.onnx"
    steps.append(_run([*EDGEKIT, "quantize", fp32, "-o", int8], work))
    steps.append(_run([*EDGEKIT, "verify", int8, *model_args], work))
    bundle = out / f"{fp32.stem}.int8.bundle"
    steps.append(_run([*EDGEKIT, "package", int8, *model_args, "-o", bundle], work))
    if bare_python and bundle.is_dir():
        steps.append(_run([bare_python, "check.py"], bundle) | {"cmd": "check.py (bare numpy+onnxruntime venv)"})
    if device:
        steps.append(_run([*EDGEKIT, "verify", int8, *model_args, "--device", "arm64-a76"], work, timeout=1800))
    for s in steps:
        s["model"] = name
    return steps


def trained_foreign(tmp: Path) -> tuple[list[dict], dict]:
    """A model trained here on real labelled data (the digits textbook_densenet reference), exported by plain
    torch.onnx as a user's pipeline would (no edgekit metadata), then imported, quantized and judged on the
    held-out labelled test split: int8 top-1 against fp32, as verify --dataset measures them."""
    import torch
    from safetensors.torch import load_file

    from benchmarks.digits import write_digits_imagefolder
    from edgekit.models.registry import create_model

    data = ROOT / "benchmarks" / "work" / "digits"
    write_digits_imagefolder(data)
    model = create_model("textbook_densenet", 10, 0, 32, settle=False)
    model.load_state_dict(load_file(ROOT / "benchmarks" / "reference" / "textbook_densenet-digits.safetensors"))
    work = tmp / "trained"
    work.mkdir()
    foreign = work / "digits_densenet.onnx"
    with torch.no_grad():
        torch.onnx.export(model.eval(), torch.zeros(1, 3, 32, 32), str(foreign), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])
    name = "textbook_densenet trained on digits (torch.onnx)"
    fp32, int8 = work / "out" / "digits.onnx", work / "out" / "digits.int8.onnx"
    steps = [
        _run([*EDGEKIT, "import", foreign, "--resize", "32", "--crop", "32", "--images", data / "calib", "-o", fp32], work),
        _run([*EDGEKIT, "quantize", fp32, "--calibration", data / "calib", "-o", int8], work),
    ]
    report = work / "verify.json"
    steps.append(_run([*EDGEKIT, "verify", int8, "--images", data / "calib", "--dataset", data / "test",
                       "--random-inputs", "0", "--report", report], work))
    for st in steps:
        st["model"] = name
    accuracy = {}
    if report.is_file():
        dataset = json.loads(report.read_text()).get("dataset") or {}
        accuracy = {"images": dataset.get("samples") or dataset.get("images"), "fp32_top1": dataset.get("reference_top1"),
                    "int8": dataset.get("providers") or dataset.get("accuracy"), "raw": dataset}
    return steps, accuracy


def command_of(row: dict) -> str:
    """The command a row ran, in a few words: 'import', 'verify --device arm64-a76', 'check.py (...)'."""
    words = row["cmd"].split(" ")
    if words[0] != "edgekit":
        return row["cmd"]
    return words[1] + (" --device " + words[words.index("--device") + 1] if "--device" in words else "")


def table(rows: list[dict]) -> str:
    lines = ["| model | command | exit | traceback | said |", "|---|---|---|---|---|"]
    for r in rows:
        said = " ".join(r["said"].split()).replace("|", "\\|")
        lines.append(f"| {r['model']} | `{command_of(r)}` | {r['exit']} | {'yes' if r['traceback'] else 'no'} | {said} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "BYOM.md")
    parser.add_argument("--bare-python", default=None, help="python of a venv with only numpy+onnxruntime+pillow")
    parser.add_argument("--no-device", action="store_true", help="skip verify --device arm64-a76")
    parser.add_argument("--only", default=None, help="comma-separated substrings of model names to run")
    parser.add_argument("--no-trained", action="store_true", help="skip the digits model trained here")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-byom-") as tmp:
        tmp = Path(tmp)
        for name, item in corpus(tmp, args.only).items():
            work = tmp / "work" / str(len(rows))
            work.mkdir(parents=True)
            made = one_model(name, item, work, args.bare_python, not args.no_device)
            rows += made
            for r in made:
                print(f"{r['model']:<55} {command_of(r):<28} exit {r['exit']}  {r['said'][:90]}", flush=True)
        accuracy = {}
        if not args.no_trained:
            made, accuracy = trained_foreign(tmp)
            rows += made
            for r in made:
                print(f"{r['model']:<55} {command_of(r):<28} exit {r['exit']}  {r['said'][:90]}", flush=True)
            print(json.dumps(accuracy.get("raw"), indent=1)[:3000], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    args.out.write_text(f"# Bring your own model: every command on files made elsewhere\n\nMeasured on {cpu}, "
                        f"reproduced by `python -m benchmarks.byom`.\n\n" + table(rows))
    (args.out.with_suffix(".json")).write_text(json.dumps({"rows": rows, "trained": accuracy}, indent=1))
    return 0 if all(r["exit"] == 0 and not r["traceback"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
