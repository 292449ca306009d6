"""The PyTorch model an ONNX file came from: built from a registered name (or a user's own entry point,
models/user.py) and a weights source, or rebuilt from a file's edgekit metadata (or from --model/--weights
for a foreign file). A user's module named in a file's metadata is never imported unless the user names it
again with --model, and its source must have the recorded sha256. Before any numeric comparison the rebuilt
module is checked against the graph (models/architecture.py): an unrelated --model is said as such.

The same code builds the model at export and rebuilds it for verify, bench and the bundle, so a
seeded random model comes back bit-identical.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from edgekit.core.files import check_readable_file, sha256_file
from edgekit.core.errors import BadInput
from edgekit.models.registry import ModelSpec, classifier_weight_key, create_model, get_spec
from edgekit.models.user import UserModel, is_user_spec, parse_user_spec, with_defaults
from edgekit.data.preprocessing import Preprocessing

RANDOM_INIT = "seeded init; BatchNorm statistics and classifier scale settled on the bundled calibration photos"


def resolve_model(name: str) -> ModelSpec | UserModel:
    """A zoo name or alias (registry.get_spec), or a user's `file.py:factory`, `pkg.module:factory`, `timm:NAME`."""
    if is_user_spec(name):
        return with_defaults(parse_user_spec(name))
    try:
        return get_spec(name)
    except BadInput as exc:
        if Path(f"{name}.py").is_file():  # `edgekit export mynet` beside mynet.py
            raise BadInput(f"unknown model {name!r}", hint=f"for your own model in {name}.py, give {name}.py:FACTORY "
                           f"(or {name}:FACTORY)") from None
        raise exc


def build_model(
    spec: ModelSpec | UserModel,
    num_classes: int | None,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    input_size: int | None = None,
    *,
    strict_classes: bool = True,
):
    """The PyTorch model in eval mode and where its weights came from. `strict_classes` False: a user's factory
    that gives other classes than `num_classes` is not refused here (build_reference's architecture check is)."""
    from edgekit.models.weights import WeightsSource, apply_state_dict, load_pretrained_state, load_state_dict_file

    if weights is not None and pretrained:
        raise BadInput("--weights and --pretrained exclude each other", hint="choose one")
    if isinstance(spec, UserModel):
        from edgekit.models.user import build_user_model

        return build_user_model(spec, num_classes, weights, pretrained, seed, input_size, RANDOM_INIT,
                                strict_classes=strict_classes)
    if weights is None and not pretrained:
        return create_model(spec.name, num_classes, seed, input_size), WeightsSource(
            kind="random", seed=seed, init=RANDOM_INIT
        )
    if pretrained:
        state, source = load_pretrained_state(spec.name, spec.torchvision_weights)
        where = source.path
    else:
        state = load_state_dict_file(Path(weights))
        source = WeightsSource(kind="file", path=str(Path(weights).resolve()), sha256=sha256_file(Path(weights)))
        where = str(weights)
    inferred = infer_num_classes(spec, state)
    if num_classes is not None and inferred is not None and num_classes != inferred:
        raise BadInput(
            f"{where} has {inferred} classes but --num-classes {num_classes} was given",
            hint="drop --num-classes to use the file's",
        )
    model = create_model(spec.name, num_classes or inferred, seed, input_size, settle=False)
    apply_state_dict(model, state, where, spec.name)
    return model.eval(), source


def infer_num_classes(spec: ModelSpec, state: dict) -> int | None:
    """Rows of the classifier weight in `state` (the key is found on a meta-device copy of the model)."""
    import torch

    with torch.device("meta"):
        key = classifier_weight_key(spec.builder(spec.default_num_classes))
    tensor = state.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim == 2 else None


@dataclass
class ReferencePlan:
    spec: object  # ModelSpec
    num_classes: int | None
    input_size: int
    weights_file: Path | None
    pretrained: bool
    seed: int
    preprocessing: Preprocessing
    from_metadata: bool
    weights: dict
    # What the graph holds, for the architecture check before any comparison (models/architecture.py).
    where: Path | None = None
    graph_convs: Counter | None = None
    graph_unknown_convs: int = 0
    graph_classes: int | None = None


def plan_reference(
    path: Path,
    model_proto,
    meta: dict | None,
    model: str | None,
    weights: Path | None,
    pretrained: bool,
    seed: int,
) -> ReferencePlan:
    """Decide how to rebuild the PyTorch reference, checking weights files and their sha256 (no torch yet).

    `meta` is the file's edgekit metadata (artifact.read_metadata). It is validated here again
    (metadata.validate_metadata: types, ranges, required fields) and checked against the graph it
    describes (input size, channels, batch, classes), so a damaged or hand-edited file is one
    BadInput line naming the field, never a traceback or a silent default.
    """
    from edgekit.core.files import shown_path
    from edgekit.onnxfile.graph import graph_dims, graph_inputs, input_spec
    from edgekit.onnxfile.metadata import check_against_graph, validate_metadata

    where = Path(shown_path(path))
    graph_input = input_spec(model_proto, where)  # one float (N, C, H, W) input, or BadInput
    parsed = validate_metadata(meta, where) if meta is not None else None
    if parsed is not None:
        check_against_graph(
            parsed, graph_dims(graph_inputs(model_proto)[0]), graph_dims(model_proto.graph.output[0]), where
        )

    if parsed is None or not parsed.has_provenance:
        return _plan_from_options(where, parsed, graph_input, model_proto, model, weights, pretrained, seed)
    spec = _recorded_spec(parsed, model, weights, where)
    recorded = parsed.weights  # the schema guarantees its kind and the fields of that kind
    weights_file, use_pretrained, ref_seed = _recorded_weights(recorded, weights, pretrained, seed, spec, parsed, where)
    return _with_graph(
        ReferencePlan(
            spec, parsed.num_classes, parsed.input_size, weights_file, use_pretrained, ref_seed,
            parsed.preprocessing_spec(), True, recorded.to_dict(),
        ),
        model_proto, where,
    )


def _plan_from_options(where: Path, parsed, graph_input, model_proto, model: str | None, weights: Path | None,
                       pretrained: bool, seed: int) -> ReferencePlan:
    """A file whose metadata does not say where it came from (none, or a parent without it): the reference is
    --model with --weights/--pretrained/the seed, at the graph's input size."""
    from edgekit.onnxfile.graph import output_classes

    if model is None:
        if parsed is None:
            raise BadInput(
                f"{where} carries no edgekit metadata, so the PyTorch model it came from is unknown",
                hint="pass --model NAME and --weights FILE (or --pretrained) it was exported from",
            )
        raise BadInput(
            f"{where} was made from a file without edgekit metadata, so the PyTorch model it came from is unknown",
            hint="pass --model NAME and --weights FILE (or --pretrained) its parent was exported from",
        )
    spec = resolve_model(model)
    size = graph_input.spatial or spec.default_input_size
    num_classes = output_classes(model_proto)
    weights_dict = weights_for_cli(weights, pretrained, seed)
    # A derived file of a foreign parent still records the preprocessing it was calibrated with.
    preprocessing = parsed.preprocessing_spec() if parsed is not None else Preprocessing.for_input_size(size)
    return _with_graph(
        ReferencePlan(spec, num_classes, size, weights, pretrained, seed, preprocessing, False, weights_dict),
        model_proto, where,
    )


def _recorded_spec(parsed, model: str | None, weights: Path | None, where: Path):
    """The model the metadata records (a user's entry point, checked; or a zoo name), and --model refused where it
    names another."""
    if parsed.entry is not None:
        spec = _user_entry(parsed, model, weights, where)
    else:
        spec = get_spec(parsed.model)
    if model is not None and is_user_spec(model) and parsed.entry is None:
        raise BadInput(
            f"{where} was exported from {spec.name} (its metadata says so), not {model}",
            hint="drop --model; it is only for files without edgekit metadata or exported from your own module",
        )
    if model is not None and parsed.entry is None and get_spec(model).name != spec.name:
        raise BadInput(
            f"{where} was exported from {spec.name} (its metadata says so), not {get_spec(model).name}",
            hint="drop --model; it is only for files without edgekit metadata",
        )
    return spec


def _recorded_weights(recorded, weights: Path | None, pretrained: bool, seed: int, spec, parsed,
                      where: Path) -> tuple[Path | None, bool, int]:
    """(weights file, pretrained, seed) of the reference from the recorded weights: seeded random weights rebuilt
    from their seed by the same init code, a file found and checked by sha256 (--weights overrides its path), or
    torchvision's pretrained weights."""
    from edgekit.core.files import shown_path

    weights_file: Path | None = None
    use_pretrained = False
    ref_seed = seed
    if recorded.kind == "random":
        if weights is not None or pretrained:
            raise BadInput(
                f"{where} was exported with seeded random weights (seed {recorded.seed}); "
                "--weights/--pretrained do not apply",
                hint="drop them: the reference is rebuilt from the seed",
            )
        ref_seed = recorded.seed
        if recorded.init != RANDOM_INIT:
            # Same seed, different initialisation code: the rebuilt model would differ from the one
            # exported, and every gate would fail for a reason that is not the file's fault.
            recorded_init = "none recorded" if recorded.init is None else repr(_short(recorded.init))
            raise BadInput(
                f"{where} has seeded random weights initialised by another edgekit version "
                f"(init {recorded_init}, now {RANDOM_INIT!r}), so its PyTorch reference cannot be rebuilt",
                hint=f"re-export it: edgekit export {spec.name} --input-size {parsed.input_size}",
            )
        return weights_file, use_pretrained, ref_seed
    expected = recorded.sha256
    if weights is not None:
        weights_file = Path(weights)
    elif recorded.kind == "file":
        weights_file = Path(recorded.path)
        if not weights_file.is_file():
            raise BadInput(
                f"the weights file {shown_path(weights_file)} that {where} was exported from is not there",
                hint=f"pass it with --weights FILE (sha256 {expected[:16]}...)",
            )
    else:
        use_pretrained = True
    if weights_file is not None:
        check_readable_file(weights_file, "weights file")
        actual = sha256_file(weights_file)
        if actual != expected:
            raise BadInput(
                f"weights {shown_path(weights_file)} have sha256 {actual}, but {where} was exported from weights "
                f"with sha256 {expected}",
                hint="pass the weights file it was exported from with --weights",
            )
    return weights_file, use_pretrained, ref_seed


def _with_graph(plan: ReferencePlan, model_proto, where: Path) -> ReferencePlan:
    """The plan with the graph's convolutions and classes, read from the proto (no weights are loaded)."""
    from edgekit.models.architecture import onnx_conv_signatures
    from edgekit.onnxfile.graph import output_classes

    convs, unknown = onnx_conv_signatures(model_proto)
    return replace(plan, where=where, graph_convs=convs, graph_unknown_convs=unknown,
                   graph_classes=output_classes(model_proto))


def _user_entry(parsed, model: str | None, weights: Path | None, where: Path) -> UserModel:
    """The user's entry point recorded in the file, named again by the user with --model (never imported from the
    file by itself) and checked: the same kind and factory, and a source with the recorded sha256."""
    entry = parsed.entry
    with_weights = ""
    if parsed.weights is not None and parsed.weights.kind == "file" and weights is None:
        with_weights = f" --weights {parsed.weights.path}"
    if model is None:
        raise BadInput(
            f"{where} was made from your own model {entry.spec}; edgekit does not import code a file names by itself",
            hint=f"pass --model {entry.spec}{with_weights}; its source was {entry.path}, sha256 {entry.sha256[:16]}..."
            if entry.sha256 else f"pass --model {entry.spec}{with_weights}",
        )
    if not is_user_spec(model):
        raise BadInput(f"{where} was exported from {entry.spec} (its metadata says so), not {model}",
                       hint=f"pass --model {entry.spec}")
    given = with_defaults(parse_user_spec(model))
    if given.kind == "timm" or entry.kind == "timm":
        if given.kind != entry.kind or given.factory != entry.factory:
            raise BadInput(f"{where} was exported from {entry.spec}, not {model}", hint=f"pass --model {entry.spec}")
    else:
        if given.factory != entry.factory:
            raise BadInput(f"{where} was exported from the factory {entry.factory!r} ({entry.spec}), not {given.factory!r}",
                           hint=f"pass --model {given.spec.rsplit(':', 1)[0]}:{entry.factory}")
        if given.sha256 != entry.sha256:
            raise BadInput(
                f"{given.path} has sha256 {given.sha256}, but {where} was exported from a source with sha256 "
                f"{entry.sha256}; the module has changed since",
                hint="pass the source it was exported from, or re-export the file",
            )
    return replace(given, family=parsed.family or given.family, default_input_size=parsed.input_size)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def weights_for_cli(weights: Path | None, pretrained: bool, seed: int) -> dict:
    if weights is not None:
        check_readable_file(Path(weights), "weights file")
        return {"kind": "file", "path": str(weights), "sha256": sha256_file(Path(weights))}
    if pretrained:
        return {"kind": "pretrained"}
    return {"kind": "random", "seed": seed}


def build_reference(plan: ReferencePlan):
    """The PyTorch fp32 model in eval mode (build_model: the same code that made the file), checked against the
    graph's architecture before anything is compared (a plan from plan_reference knows the graph)."""
    model, source = build_model(
        plan.spec, plan.num_classes, plan.weights_file, plan.pretrained, plan.seed, plan.input_size,
        strict_classes=plan.graph_convs is None,
    )
    if plan.graph_convs is not None:
        import torch

        from edgekit.models.architecture import check_architecture

        example = torch.zeros(1, *plan.preprocessing.chw)
        check_architecture(model, plan.graph_convs, plan.graph_unknown_convs, plan.graph_classes, example,
                           plan.where or "the file", plan.spec.name)
    if plan.pretrained and plan.weights.get("sha256") and source.sha256 != plan.weights["sha256"]:
        raise BadInput(
            f"the pretrained weights in the local cache ({source.path}) have sha256 {source.sha256}, but the file "
            f"was exported from weights with sha256 {plan.weights['sha256']}",
            hint="pass the weights file it was exported from with --weights",
        )
    if not plan.from_metadata:
        plan.weights = source.to_dict()
    return model


def rebuild_reference(
    path: Path,
    model_proto,
    meta: dict | None,
    model: str | None = None,
    weights: Path | None = None,
    pretrained: bool = False,
    seed: int = 0,
):
    """(PyTorch model, plan) of the fp32 model an ONNX file came from."""
    plan = plan_reference(path, model_proto, meta, model, weights, pretrained, seed)
    return build_reference(plan), plan
