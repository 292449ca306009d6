"""The `edgekit` metadata of an int8 file, built once through its schema (onnxfile/metadata_schema.py): the parent's
provenance, and the int8 parts (parent, calibration, recipe, quantization report) each made as its schema model, the
whole validated before it is written. A rule the built object breaks is edgekit's own bug (exit 1), never written."""

from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import BadInput, InvariantBroken
from edgekit.core.files import sha256_file
from edgekit.core.provenance import library_versions


def int8_metadata(parent_meta: dict | None, parent_path: Path, *, preprocessing, calibration: dict, recipe: dict,
                  report: dict, task: str, opset: int | None) -> dict:
    """The metadata object of the int8 file quantized from PARENT_PATH (whose metadata is PARENT_META, None for a
    foreign file): CALIBRATION (CalibrationSet.to_metadata()), RECIPE (the recipe section as written), REPORT (the
    quantization report), the TASK, and the int8 file's own OPSET (recorded where the parent records one)."""
    from edgekit.onnxfile.metadata import validate_metadata
    from edgekit.onnxfile.metadata_schema import Calibration, Parent, QuantizationReport, QuantRecipe

    try:
        data = {
            **dict(parent_meta or {}),
            "precision": "int8",
            "parent": Parent(file=parent_path.name, path=str(parent_path.resolve()), sha256=sha256_file(parent_path),
                             metadata=bool(parent_meta)).to_dict(),
            "calibration": Calibration(**calibration).to_dict(),
            "recipe": QuantRecipe(**recipe).to_dict(),
            "quantization_report": QuantizationReport(**report).to_dict(),
            "versions": library_versions(),
        }
        if not parent_meta:
            data["preprocessing"] = preprocessing.to_dict()
        if task == "dense":
            data["task"] = "dense"
        if data.get("opset") is not None:  # the int8 file's own (quantize's preparation may have upgraded it)
            data["opset"] = opset
        return validate_metadata(data, parent_path).to_dict()
    except (BadInput, ValueError) as exc:  # (pydantic's ValidationError is a ValueError)
        text = exc.message if isinstance(exc, BadInput) else " ".join(str(exc).split())[:300]
        raise InvariantBroken(f"the int8 metadata quantize built breaks its schema: {text}") from None
