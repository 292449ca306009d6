"""The search: the smallest set of QDQ groups whose fp32 restoration makes an int8 file pass its gates.

Every evaluation reverts some groups in the quantized graph (layer_error/groups.py: no calibration, no quantize
pass), runs it in ONNX Runtime through edgekit.runtimes (on --device's kernels when given) and compares its first
output with the fp32 parent's on the same inputs, under the gates verify and quantize hold the file to
(judge/compare.py gates_for). The search, each step's runs counted:
1. the file as it is (it may pass already: nothing to exclude);
2. every group reverted (if that fails too, no exclusion list can help);
3. bisection over the topologically ordered groups: the shortest prefix that passes (about log2(G) runs);
4. the prefix's last group alone (one run: a single culprit ends here);
5. otherwise a second bisection for the first group the tail needs, then the groups between dropped where the
   gates do not need them: halves, then quarters, down to one at a time (drop_unneeded).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed
from edgekit.core.files import shown_path

MAX_DROP_RUNS = 48  # ORT runs the last step takes at most (the groups it did not get to stay in the set, said in a note)


@dataclass
class Step:
    name: str
    runs: int
    result: str

    def to_dict(self) -> dict:
        return {"step": self.name, "runs": self.runs, "result": self.result}


@dataclass
class DebugResult:
    path: Path
    parent: Path
    gates: str
    groups: int
    passed_as_is: bool
    culprits: list  # layer_error.groups.Group
    exclude: list[str]
    steps: list[Step]
    metric: dict  # the first output's metrics with the culprits reverted (or as is)
    before: dict  # ... and of the file as it is
    reduced: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return sum(s.runs for s in self.steps)

    def quantize_command(self) -> str:
        import shlex

        args = " ".join(f"--exclude {shlex.quote(n)}" for n in self.exclude)
        return f"edgekit quantize {shlex.quote(str(self.parent))} {args}".rstrip()

    def to_dict(self) -> dict:
        return {
            "file": str(self.path), "parent": str(self.parent), "gates": self.gates, "groups": self.groups,
            "passed_as_is": self.passed_as_is, "exclude": self.exclude, "nodes_to_exclude": self.exclude,
            "quantize_command": self.quantize_command() if self.exclude else None,
            "culprits": [g.to_dict() for g in self.culprits], "runs": self.runs,
            "steps": [s.to_dict() for s in self.steps], "before": self.before, "after": self.metric,
            "reduced": self.reduced, "notes": self.notes,
        }


class Evaluator:
    """Runs the int8 file with some groups reverted and judges it against the fp32 parent's outputs."""

    def __init__(self, int8, parent, inputs: np.ndarray, tolerance, device: str | None, workdir: Path):
        from edgekit.layer_error.groups import ParentWeights
        from edgekit.runtimes.factory import open_runner

        self.int8, self.parent, self.x, self.tol, self.device = int8, parent, inputs, tolerance, device
        self.workdir = workdir
        self.output = int8.proto.graph.output[0].name
        runner = open_runner(parent.path, batch=parent.spec.batch)
        try:
            self.reference = runner.run(inputs)[0].astype(np.float32, copy=False)
        finally:
            runner.close()
        if not np.isfinite(self.reference).all():
            raise CheckFailed(f"the fp32 parent {shown_path(parent.path)} itself gives NaN/Inf on these inputs")
        self.runs = 0
        self.cache: dict[frozenset, object] = {}
        self.weights = ParentWeights(parent.proto)  # each weight's parent value, found once for the whole search

    def model_with(self, groups):
        """The int8 graph with `groups` reverted and the ops writing their activations on the parent's weights: the
        file `quantize --exclude` with their exclusion list makes (exclusions.py), so what passes here passes there."""
        from edgekit.debug.exclusions import writers_group
        from edgekit.layer_error.groups import revert

        if not groups:
            return self.int8.proto
        return revert(self.int8.proto, self.parent.proto, [*groups, writers_group(groups, self.int8.proto)],
                      self.weights)

    def __call__(self, groups):
        """The metrics of the first output with `groups` reverted (cached: a set is run once)."""
        key = frozenset(g.index for g in groups)
        if key in self.cache:
            return self.cache[key]
        import onnx

        from edgekit.judge.compare import compare_outputs
        from edgekit.runtimes.factory import open_runner

        model = self.model_with(groups)
        path = self.workdir / f"reverted-{self.runs}.onnx"
        onnx.save(model, str(path))
        runner = open_runner(path, device=self.device, recipe=self.int8.recipe, keep_float=bool(groups),
                             batch=self.int8.spec.batch)
        try:
            out = runner.run(self.x)[0]
        finally:
            runner.close()
            path.unlink(missing_ok=True)
        self.runs += 1
        metrics = compare_outputs(self.reference, out, self.output, self.tol)
        self.cache[key] = metrics
        return metrics


def search(groups, evaluate: Evaluator, steps: list[Step], notes: list[str]):
    """(the culprit groups, their metrics) after the file failed as it is; CheckFailed when every group reverted
    still fails."""
    count = len(groups)

    def step(name: str, start: int, result: str) -> None:
        steps.append(Step(name, evaluate.runs - start, result))

    start = evaluate.runs
    everything = evaluate(groups)
    step("every group reverted", start, "pass" if everything.passed else "fail")
    if not everything.passed:
        raise CheckFailed(f"the file fails its gates even with all {count} QDQ groups back in fp32 "
                          f"({'; '.join(everything.failures)}): int8 is not the cause")
    start = evaluate.runs
    lo, hi = 0, count  # the prefix of lo groups fails, of hi groups passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if evaluate(groups[:mid]).passed:
            hi = mid
        else:
            lo = mid
    step("bisect the ordered groups", start, f"the first {hi} of {count} groups pass")
    last = groups[hi - 1]
    if hi == 1:
        return [last], evaluate([last])
    start = evaluate.runs
    alone = evaluate([last])
    step(f"group {last.index} alone", start, "pass" if alone.passed else "fail")
    if alone.passed:
        return [last], alone
    # the tail [s, hi) passes for s = 0 and fails for s = hi - 1: the largest s that passes
    start = evaluate.runs
    lo_s, hi_s = 0, hi - 1  # groups[lo_s:hi] passes, groups[hi_s:hi] fails
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if evaluate(groups[mid:hi]).passed:
            lo_s = mid
        else:
            hi_s = mid
    step("bisect the prefix's tail", start, f"groups {groups[lo_s].index}..{last.index} pass")
    start = evaluate.runs
    chosen, finished = drop_unneeded(list(groups[lo_s:hi]), evaluate)
    if not finished:
        notes.append(f"the last step stopped at its limit of {MAX_DROP_RUNS} runs: some of the {len(chosen)} groups "
                     "kept were not tried without")
    step("drop unneeded groups, halves down to one by one", start, f"{len(chosen)} groups needed")
    return chosen, evaluate(chosen)


def drop_unneeded(chosen: list, evaluate, limit: int = MAX_DROP_RUNS) -> tuple[list, bool]:
    """`chosen` (which passes) without the groups between its first and last that the gates do not need, and
    whether every one was tried. Blocks are dropped as in delta debugging's reduction to complements: halves of
    the groups between, then quarters, down to one group at a time, each block tried once at each size (a set
    already judged is not run again). The one-by-one pass alone tried at most 24 of the 149 groups between on
    efficientnet_b0 and kept 143 of its 166 groups in fp32; many unneeded groups go in a few runs this way."""
    first, middle, last = chosen[0], list(chosen[1:-1]), chosen[-1]
    start = evaluate.runs
    size = max(1, len(middle) // 2)
    while middle:
        i = 0
        while i < len(middle):
            if evaluate.runs - start >= limit:
                return [first, *middle, last], False
            trial = [first, *middle[:i], *middle[i + size:], last]
            if evaluate(trial).passed:
                middle = middle[:i] + middle[i + size:]
            else:
                i += size
        if size == 1:
            break
        size = max(1, size // 2)
    return [first, *middle, last], True


def inputs_for(int8, images: Path | None, inputs: Path | None) -> tuple[np.ndarray, str, list[str]]:
    """The tensors the file is judged on: photos through its preprocessing (the bundled calibration photos by
    default) or a tensor file (.npz/.npy)."""
    from edgekit.core import limits
    from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
    from edgekit.data.tensors import load_tensor_file

    if images is not None and inputs is not None:
        raise BadInput("give --images or --inputs, not both")
    chw = int8.spec.chw
    if inputs is not None:
        if any(d is None for d in chw):
            raise BadInput(f"{shown_path(int8.path)} has a dynamic input; give --images so its preprocessing sets it")
        chw = limits.check_dims(chw, "the model's input (C, H, W)", bound=limits.MAX_INPUT_SIZE)
        x = load_tensor_file(Path(inputs), chw)
        return x, f"{len(x)} tensors from {shown_path(inputs)}", []
    folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
    photos = load_image_folder(folder, int8.preprocessing())
    notes = [f"skipped {len(photos.corrupt)} unreadable image(s) in {shown_path(folder)}"] if photos.corrupt else []
    return photos.tensors, f"{len(photos.tensors)} images from {shown_path(folder)}", notes


def debug(path: Path, *, parent: Path | None = None, images: Path | None = None, inputs: Path | None = None,
          device: str | None = None, reduce: bool = False, output: Path | None = None, stage=None) -> DebugResult:
    """Find the QDQ groups of the int8 file at `path` that must stay fp32 for it to pass its gates."""
    from edgekit.judge.compare import gates_for
    from edgekit.debug.exclusions import exclusion_list
    from edgekit.layer_error.groups import qdq_groups
    from edgekit.onnxfile import OnnxFile

    stage = stage or (lambda name: None)
    if output is not None and not reduce:
        raise BadInput("-o is the folder --reduce writes to", hint="add --reduce, or drop -o")
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        raise BadInput(f"-o {shown_path(output)} is a file, not a folder", hint="choose a folder for --reduce")
    stage("load")
    int8 = OnnxFile.open(Path(path))
    where = shown_path(int8.path)
    if int8.precision != "int8":
        raise BadInput(f"{where} is a {int8.precision} file, not int8", hint="debug takes the int8 file edgekit "
                       "quantize wrote, with its fp32 parent")
    parent_path = _parent_of(int8, parent)
    parent_file = OnnxFile.open(parent_path)
    if parent_file.precision != "fp32":
        raise BadInput(f"the parent {shown_path(parent_path)} is {parent_file.precision}, not fp32",
                       hint="pass the fp32 file the int8 file was quantized from with --parent")
    if [i.name for i in parent_file.proto.graph.input] != [i.name for i in int8.proto.graph.input] or \
            parent_file.proto.graph.output[0].name != int8.proto.graph.output[0].name:
        raise BadInput(f"{shown_path(parent_path)} does not have the inputs and output of {where}",
                       hint="pass the fp32 file the int8 file was quantized from with --parent")
    groups = qdq_groups(int8.proto, parent_file.proto)
    task = _task(int8)
    tolerance, gates = gates_for("int8", int8.trained, task=task)
    stage("inputs")
    x, described, notes = inputs_for(int8, images, inputs)
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-debug-") as tmp:
        stage("fp32 parent")
        evaluate = Evaluator(int8, parent_file, x, tolerance, device, Path(tmp))
        stage("the file as it is")
        as_is = evaluate([])
        steps.append(Step("the file as it is", 1, "pass" if as_is.passed else "fail"))
        kernels = f"; int8 on the {device} kernels" if device not in (None, "host") else ""
        result = DebugResult(int8.path, parent_path, f"{gates}; on {described}{kernels}", len(groups), as_is.passed,
                             [], [], steps, as_is.to_dict(), as_is.to_dict(), notes=notes)
        if as_is.passed:
            return result
        stage("search")
        culprits, after = search(groups, evaluate, steps, notes)
        result.culprits, result.metric = culprits, after.to_dict()
        result.exclude = exclusion_list(culprits, int8.proto, parent_file.proto, notes)
        for g in culprits:
            notes.extend(g.notes)
        if reduce:
            from edgekit.debug.reduce import reduce_group

            stage("reduce")
            result.reduced = reduce_group(int8, evaluate, culprits, output, tolerance, notes)
    return result


def _parent_of(int8, given: Path | None) -> Path:
    from edgekit.reference.runner import find_by_sha256

    parent = (int8.metadata or {}).get("parent")
    if not isinstance(parent, dict) or not parent.get("sha256"):
        if given is None:
            raise BadInput(f"{shown_path(int8.path)} records no fp32 parent",
                           hint="pass the fp32 file it was quantized from with --parent")
        from edgekit.core.files import check_readable_file

        return check_readable_file(Path(given), "--parent (fp32 parent)")
    return find_by_sha256(int8.path, str(parent.get("file", "")), parent["sha256"], given, "fp32 parent",
                          "quantized from")


def _task(int8) -> str:
    from edgekit.onnxfile.metadata import validate_metadata
    from edgekit.reference.runner import dense_task

    parsed = validate_metadata(int8.metadata, int8.path) if int8.metadata is not None else None
    return dense_task(int8.proto, parsed)
