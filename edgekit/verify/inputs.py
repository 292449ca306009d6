"""The inputs verify compares on: photos through the model's preprocessing, tensor files, seeded noise."""

from __future__ import annotations

from pathlib import Path

from edgekit.calibration import DEFAULT_CALIBRATION_DIR, load_image_folder, load_tensor_file, seeded_random_inputs
from edgekit.errors import BadInput
from edgekit.preprocessing import Preprocessing
from edgekit.verify.results import InputSet

DEFAULT_RANDOM_INPUTS = 4


def load_input_sets(
    preprocessing: Preprocessing,
    chw: tuple[int, int, int],
    images: Path | None,
    inputs: Path | None,
    random_inputs: int,
    seed: int,
) -> tuple[list[InputSet], list[str]]:
    """Photos (default: the bundled calibration/ ones), a tensor file, and seeded random inputs."""
    sets: list[InputSet] = []
    notes: list[str] = []
    if random_inputs < 0:
        raise BadInput(f"--random-inputs must be >= 0, got {random_inputs}")
    if images is not None or inputs is None:
        folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
        photos = load_image_folder(folder, preprocessing)
        if tuple(photos.tensors.shape[1:]) != tuple(chw):
            raise BadInput(
                f"the model's preprocessing makes {tuple(photos.tensors.shape[1:])} tensors, but its input "
                f"expects (N, {', '.join(map(str, chw))})",
                hint="its metadata disagrees with its graph; re-export it",
            )
        sets.append(InputSet("photos", f"{len(photos)} images from {folder}", photos.tensors))
        if photos.corrupt:
            notes.append(
                f"skipped {len(photos.corrupt)} unreadable image(s) in {folder}: "
                + ", ".join(f"{p.name} ({r})" for p, r in photos.corrupt[:3])
            )
    if inputs is not None:
        tensors = load_tensor_file(Path(inputs), chw)
        sets.append(InputSet("tensors", f"{len(tensors)} tensors from {inputs}", tensors))
    if random_inputs:
        sets.append(
            InputSet(
                "random",
                f"{random_inputs} seeded standard-normal inputs (seed {seed})",
                seeded_random_inputs(random_inputs, chw, seed),
            )
        )
    if not sets:
        raise BadInput("no inputs to verify with", hint="give --images, --inputs or --random-inputs N")
    return sets, notes


def expected_chw(session, preprocessing: Preprocessing) -> tuple[int, int, int]:
    shape = session.session.get_inputs()[0].shape
    if len(shape) != 4:
        raise BadInput(
            f"input {session.input_name!r} of the model has rank {len(shape)} ({shape}); "
            "edgekit verifies image classifiers with (N, C, H, W) inputs"
        )
    return tuple(int(d) if isinstance(d, int) else default for d, default in zip(shape[1:], preprocessing.chw))
