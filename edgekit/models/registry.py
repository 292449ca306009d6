"""Model registry: names feed the CLI's choices and its error messages.

A model is registered with a small function that only sets architecture arguments
(see textbook.py and torchvision.py); construction, seeding and weights loading live here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from edgekit.core.errors import BadInput

DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """What edgekit knows about one registered architecture."""

    name: str
    family: str  # resnet | resnext | densenet
    source: str  # textbook | torchvision
    builder: Callable[[int], "object"]  # num_classes -> nn.Module (random init from the global RNG)
    default_num_classes: int
    default_input_size: int = 224
    description: str = ""
    # torchvision weights enum name, for --pretrained (None for textbook models)
    torchvision_weights: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model (and its aliases) to the registry."""
    if spec.name in _REGISTRY or spec.name in _ALIASES:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def list_models() -> list[ModelSpec]:
    """All registered models, textbook first, then torchvision, in registration order."""
    return list(_REGISTRY.values())


def aliases() -> dict[str, str]:
    """Alias -> canonical model name."""
    return dict(_ALIASES)


def get_spec(name: str) -> ModelSpec:
    """Resolve a model name or alias (case-insensitive); unknown names get close matches and the list."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    known = sorted(_REGISTRY) + sorted(_ALIASES)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    did_you_mean = f"did you mean {', '.join(close)}? " if close else ""
    raise BadInput(
        f"unknown model {name!r}; {did_you_mean}known: {', '.join(known)}",
    )


def create_model(
    name: str,
    num_classes: int | None = None,
    seed: int = DEFAULT_SEED,
    input_size: int | None = None,
    settle: bool = True,
):
    """Build a registered model in eval mode with seeded random weights; nothing is left lazy.

    The random network is settled on the bundled photos at `input_size` (see
    weights.settle_random_init) so its activations and logits have a trained network's scale.
    """
    import torch

    from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.models.blocks import materialize
    from edgekit.models.weights import settle_random_init

    spec = get_spec(name)
    size = input_size or spec.default_input_size
    photos = load_image_folder(DEFAULT_CALIBRATION_DIR, Preprocessing.for_input_size(size)).tensors if settle else None
    n = spec.default_num_classes if num_classes is None else num_classes
    if n < 1:
        raise BadInput(f"--num-classes must be at least 1, got {n}")
    # fork_rng: seeding must not disturb the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder(n)
        materialize(model)
        init = getattr(model, "reset_parameters_seeded", None)
        if init is not None:
            init()
        if settle:
            settle_random_init(model, photos)
    return model.eval()


def classifier_weight_key(model) -> str:
    """The state_dict key of the last Linear layer's weight (its rows are the classes)."""
    from torch import nn

    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = module_name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier")
    return f"{last}.weight"
