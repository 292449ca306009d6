"""Runtimes: one runner per runtime, behind one small interface (runner.py), and the devices a file can run on.

ort.py (ONNX Runtime sessions: provider selection, no silent fallback, node placement), runners.py (one batching
rule; the ORT and PyTorch runners), openvino_model.py (OpenVINO as an optional second runtime) and openvino.py (its
runner), torch_eager.py (PyTorch eager/CUDA), devices.py (host, x86-avx2, arm64: native, emulated or missing what),
emulated.py (an ORT session inside QEMU, same interface), sysroot.py (`devices setup arm64`). Imports core/, judge/,
onnxfile/ and ondevice/ below it, never a stage. This package re-exports nothing: import the module you need, e.g.
`from edgekit.runtimes.ort import create_session`.
"""
