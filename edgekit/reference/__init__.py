"""The reference an ONNX file is judged against, as one runner: the PyTorch model it was exported from (rebuilt
from its metadata, or from --model/--weights), or, for files with no PyTorch source, its fp32 parent or the
original foreign file in ONNX Runtime. verify and package both use it (reference/runner.py: open_reference)."""
