"""Facts about registered models, measured from the models themselves (for `models` and `summary`)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.models.registry import get_spec, list_models


@dataclass(frozen=True)
class ModelFacts:
    name: str
    family: str
    source: str
    params: int
    macs: int
    input_size: int
    grouped_convs: int
    concats: int


def _meta_model(name: str, num_classes: int | None = None):
    """The architecture on the meta device (shapes only: instant, no memory for weights), in eval mode."""
    import torch

    from edgekit.models.blocks import materialize

    spec = get_spec(name)
    with torch.device("meta"):
        return materialize(spec.builder(num_classes or spec.default_num_classes)).eval()


def model_macs(name: str, num_classes: int | None, input_size: int) -> int:
    """Multiply-accumulates of one image through a registered model at `input_size`."""
    import torch

    from edgekit.onnxfile.structure import count_macs

    model = _meta_model(name, num_classes)
    with torch.device("meta"):
        return count_macs(model, input_size)


MODEL_SOURCES = ("registry.py", "blocks.py", "textbook.py", "textbook_nets.py", "torchvision.py")


def _facts_key() -> str:
    """What the facts depend on: torch and torchvision's versions and the sources that build and count the models."""
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    digest = hashlib.sha256(f"{version('torch')} {version('torchvision')}".encode())
    here = Path(__file__).resolve().parent
    sources = [here / name for name in MODEL_SOURCES] + [here.parent / "onnxfile" / "structure.py", Path(__file__).resolve()]
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def describe_models() -> list[ModelFacts]:
    """Params, MACs, grouped convs and concats of every registered model: measured once (on the meta device, ~8 s
    for all) and cached under edgekit's cache, keyed by the torch/torchvision versions and the model sources."""
    import json

    from edgekit.onnxfile.outputs import write_text_atomic
    from edgekit.core.files import cache_dir

    path = cache_dir() / f"model-facts-{_facts_key()}.json"
    names = [spec.name for spec in list_models()]
    try:
        cached = [ModelFacts(**row) for row in json.loads(path.read_text()[:1 << 20])]
        if [f.name for f in cached] == names and all(isinstance(v, (int, str)) for f in cached for v in f.__dict__.values()):
            return cached
    except (OSError, ValueError, TypeError):
        pass  # absent or damaged: measured again below, and rewritten
    facts = measure_models()
    from edgekit.core.errors import EdgekitError

    try:
        write_text_atomic(path, json.dumps([f.__dict__ for f in facts]))
    except EdgekitError:  # an unwritable cache costs the next listing 8 s, nothing else
        pass
    return facts


def measure_models() -> list[ModelFacts]:
    """Params, MACs, grouped convs and concats of every registered model, built on the meta device
    (shapes only: no memory for weights)."""
    import torch

    from edgekit.onnxfile.structure import count_macs, torch_structure

    facts = []
    for spec in list_models():
        model = _meta_model(spec.name)  # eval: no BN statistics to compute
        size = spec.default_input_size
        with torch.device("meta"):
            structure = torch_structure(model, torch.zeros(1, 3, size, size))
            macs = count_macs(model, size)
        facts.append(
            ModelFacts(spec.name, spec.family, spec.source, structure.params, macs, size, structure.grouped_convs, structure.concats)
        )
    return facts


def layer_summary(name: str, input_size: int | None = None, num_classes: int | None = None, depth: int = 3) -> str:
    """torchinfo's table for one model at (1, 3, size, size)."""
    import torchinfo

    spec = get_spec(name)
    size = input_size or spec.default_input_size
    model = _meta_model(name, num_classes).to_empty(device="cpu")
    stats = torchinfo.summary(model, input_size=(1, 3, size, size), depth=depth, verbose=0, device="cpu")
    return str(stats)
