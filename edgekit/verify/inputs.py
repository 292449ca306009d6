"""The inputs verify compares on: photos through the model's preprocessing, tensor files, seeded noise."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgekit.core import limits
from edgekit.core.files import shown_path
from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder, skipped_note
from edgekit.data.tensors import load_tensor_file, seeded_random_inputs
from edgekit.core.errors import BadInput
from edgekit.data.preprocessing import Preprocessing
from edgekit.verify.results import InputSet

DEFAULT_RANDOM_INPUTS = 4


def load_input_sets(
    preprocessing: Preprocessing,
    chw: tuple[int, int, int],
    images: Path | None,
    inputs: Path | None,
    random_inputs: int,
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[InputSet], list[str]]:
    """Photos (default: the bundled calibration/ ones), a tensor file, and seeded random inputs.

    Sizes are bounded before anything is decoded or allocated: --random-inputs by
    limits.MAX_RANDOM_INPUTS, every tensor by limits.MAX_TENSOR_BYTES, a folder by
    limits.MAX_IMAGES_IN_FOLDER. `on_progress(done, total)` follows the decoding of the photos.
    """
    sets: list[InputSet] = []
    notes: list[str] = []
    random_inputs = limits.check_count(random_inputs, "--random-inputs", limits.MAX_RANDOM_INPUTS, minimum=0)
    chw = limits.check_dims(chw, "the model's input (C, H, W)", bound=limits.MAX_INPUT_SIZE)
    if random_inputs:
        limits.check_tensor_budget((random_inputs, *chw), 4, "--random-inputs", hint="ask for fewer random inputs")
    if images is not None or inputs is None:
        folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
        shown = shown_path(folder)
        photos = load_image_folder(folder, preprocessing, on_progress=on_progress)
        if tuple(photos.tensors.shape[1:]) != tuple(chw):
            raise BadInput(
                f"the model's preprocessing makes {tuple(photos.tensors.shape[1:])} tensors, but its input "
                f"expects (N, {', '.join(map(str, chw))})",
                hint="its metadata disagrees with its graph; re-export it",
            )
        sets.append(InputSet("photos", f"{len(photos)} images from {shown}", photos.tensors))
        notes += photos.notes
        if photos.corrupt:
            notes.append(
                f"skipped {len(photos.corrupt)} unreadable image(s) in {shown}: "
                + ", ".join(f"{shown_path(p.name)} ({r})" for p, r in photos.corrupt[:3])
            )
        if photos.skipped:
            notes.append(skipped_note(folder, photos.skipped))
    if inputs is not None:
        tensors = load_tensor_file(Path(inputs), chw)
        sets.append(InputSet("tensors", f"{len(tensors)} tensors from {shown_path(inputs)}", tensors))
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
    """(C, H, W) of the tensors to feed: the graph's static dims, the preprocessing's where a dim is dynamic.

    The graph's declared dims are untrusted (a foreign file): each is checked against
    limits.MAX_INPUT_SIZE before any tensor is made from it.
    """
    shape = session.input_shape
    name = session.input_name
    if len(shape) != 4:
        raise BadInput(
            f"input {name!r} of the model has rank {len(shape)} ({shape}); "
            "edgekit verifies image classifiers with (N, C, H, W) inputs"
        )
    chw = tuple(
        int(d) if isinstance(d, int) and not isinstance(d, bool) and d > 0 else default
        for d, default in zip(shape[1:], preprocessing.chw)
    )
    return limits.check_dims(chw, f"input {name!r} of the model (C, H, W)", bound=limits.MAX_INPUT_SIZE)
