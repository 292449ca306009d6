"""One ONNX file and its graph facts. This module is `OnnxFile`: one ONNX file, opened once, the handle every stage
takes instead of re-deriving the file's facts.

The floor: artifact.py (the one place that reads and writes .onnx: validated load, staged atomic save), outputs.py
(atomic writes of output files and folders), metadata.py and metadata_schema.py (the `edgekit` metadata, checked
against the graph), graph.py (a file's input, precision, static batch), structure.py (op counts, MACs, grouped convs
and concats, the same for PyTorch and ONNX). Submodules never import this __init__ (that would be a circle); it
imports them, and core/, data/ and judge/ below it. Nothing else is re-exported here: import the submodule.

`OnnxFile.open` loads and validates through artifact.load_onnx (the one reader of .onnx files), then reads what
the stages ask of a file in one place: its edgekit metadata, input, precision, preprocessing, whether its weights
were trained, its int8 recipe, the gates it is held to and the session options it needs on every CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.onnxfile.artifact import load_onnx, read_metadata
from edgekit.judge.compare import Tolerance, gates_for, weights_of_file
from edgekit.core.errors import BadInput
from edgekit.onnxfile.graph import InputSpec, input_spec, precision_of
from edgekit.data.preprocessing import Preprocessing
from edgekit.judge.targets import session_config_for


@dataclass
class OnnxFile:
    """A loaded, validated ONNX file and its facts."""

    path: Path
    proto: object  # onnx.ModelProto, external data loaded
    metadata: dict | None  # the validated `edgekit` metadata; None for a foreign file
    spec: InputSpec
    precision: str  # fp32 | fp16 | int8

    @classmethod
    def open(cls, path: Path, *, check: bool = True) -> "OnnxFile":
        path = Path(path)
        proto = load_onnx(path, check=check)
        metadata = read_metadata(proto, path)
        return cls(path, proto, metadata, input_spec(proto, path), precision_of(proto, metadata))

    @property
    def trained(self) -> bool:
        """Its weights were trained (the metadata says a weights file or pretrained), so stricter int8 gates."""
        return weights_of_file(self.metadata)[0]

    @property
    def recipe(self) -> dict:
        """The int8 recipe its metadata records ({} for other precisions and foreign files)."""
        return dict((self.metadata or {}).get("recipe") or {}) if self.precision == "int8" else {}

    def preprocessing(self) -> Preprocessing:
        """From the metadata; a foreign file gets ImageNet preprocessing at its static input size."""
        if self.metadata and "preprocessing" in self.metadata:
            return Preprocessing.from_dict(self.metadata["preprocessing"])
        if self.spec.chw[0] != 3 or self.spec.spatial is None:
            raise BadInput(f"{self.path} has no edgekit metadata and its input is not (N, 3, S, S); cannot tell its "
                           "preprocessing")
        return Preprocessing.for_input_size(self.spec.spatial)

    def gates(self, precision: str | None = None, **overrides) -> tuple[Tolerance, str]:
        """The gates this file (or, for quantize, the int8 file made from it: `precision`) is held to."""
        return gates_for(precision or self.precision, self.trained, **overrides)

    def session_config(self) -> dict[str, str]:
        """The session options it needs on every CPU (nodes kept in float stay float)."""
        return session_config_for(self.recipe)
