"""edgekit: PyTorch CNN classifiers to verified, quantized ONNX files for edge targets."""

__version__ = "0.1.0"
