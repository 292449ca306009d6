"""Per-layer int8 error of a QDQ file against its fp32 parent: measure.py runs ONNX Runtime's qdq_loss_debug (and
the deployed kernels), report.py holds the records and their ranking; the picture is edgekit.plots."""

from edgekit.layer_error.measure import layer_errors
from edgekit.layer_error.report import ActivationError, LayerReport, WeightError, sqnr_db

__all__ = ["layer_errors", "LayerReport", "ActivationError", "WeightError", "sqnr_db"]
