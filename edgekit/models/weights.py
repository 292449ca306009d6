"""Weights: seeded random (with settled BatchNorm statistics), a local file, or torchvision's
pretrained weights when they are already in the local torch hub cache (there is no network)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.files import check_readable_file, sha256_file
from edgekit.core.errors import BadInput, EnvironmentUnavailable, one_line


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from, as recorded in the artefact metadata."""

    kind: str  # random | file | pretrained
    seed: int | None = None
    path: str | None = None
    sha256: str | None = None
    name: str | None = None  # torchvision weights enum entry, for pretrained
    init: str | None = None  # how random weights were initialised

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "WeightsSource":
        return cls(**{k: data.get(k) for k in ("kind", "seed", "path", "sha256", "name", "init")})

    def describe(self) -> str:
        if self.kind == "random":
            return f"random(seed={self.seed})"
        if self.kind == "file":
            return f"{self.path} (sha256 {self.sha256[:12]})"
        return f"{self.name} (sha256 {self.sha256[:12]})"


def load_state_dict_file(path: Path) -> dict:
    """Tensors from a .safetensors file or a .pt/.pth state_dict / checkpoint, never unpickling objects."""
    import torch

    path = check_readable_file(Path(path), "weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInput(f"{path} is not a valid safetensors file: {one_line(exc)}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
            text = one_line(exc)
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise BadInput(
                    f"{path} holds Python objects that are not plain tensors; refusing to unpickle it",
                    hint="save a state_dict (torch.save(model.state_dict(), ...)) or a .safetensors file",
                ) from None
            raise BadInput(f"{path} is not a readable PyTorch weights file ({text[:200]})", hint="is it truncated?") from None
        if isinstance(state, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
    if not isinstance(state, dict) or not state:
        raise BadInput(f"{path} holds no state_dict (a dict of tensors)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BadInput(f"{path} holds no tensors")
    # Checkpoints saved from DataParallel / DDP prefix every key with "module.".
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def apply_state_dict(model, state: dict, source: str, model_name: str) -> None:
    """Load `state` into `model` strictly; a mismatch names the first differing keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
            )
        raise BadInput(f"{source} does not fit {model_name}: {'; '.join(parts)}", hint="is it for another model?")
    model.load_state_dict(state, strict=True)


def torchvision_hub_checkpoint(weights_enum: str):
    """(weights entry, expected local path) for torchvision's default pretrained weights."""
    import torch
    import torchvision.models

    entry = getattr(torchvision.models, weights_enum).DEFAULT
    filename = entry.url.rsplit("/", 1)[-1]
    return entry, Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_pretrained_state(model_name: str, weights_enum: str | None) -> tuple[dict, WeightsSource]:
    """torchvision's pretrained state_dict from the local hub cache; EnvironmentUnavailable (exit 3) if absent."""
    if weights_enum is None:
        raise BadInput(f"{model_name} has no pretrained weights", hint="use --weights FILE or seeded random weights")
    entry, path = torchvision_hub_checkpoint(weights_enum)
    if not path.is_file():
        raise EnvironmentUnavailable(
            f"pretrained weights for {model_name} are not in the local torch hub cache: {path} is missing",
            hint=f"there is no network here; copy {entry.url.rsplit('/', 1)[-1]} to {path.parent}/ or use --weights FILE",
        )
    state = load_state_dict_file(path)
    if model_name.startswith("densenet"):
        state = _densenet_legacy_keys(state)
    return state, WeightsSource(kind="pretrained", name=f"{weights_enum}.{entry.name}", path=str(path), sha256=sha256_file(path))


def _densenet_legacy_keys(state: dict) -> dict:
    # torchvision's published DenseNet files use "norm.1"-style keys; its own loader renames them.
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    renamed = {}
    for key, value in state.items():
        match = pattern.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def settle_random_init(model, images) -> None:
    """Data-dependent initialisation of a randomly initialised network (as LSUV does): every
    BatchNorm's running statistics are set from one batch of real images, and the last Linear layer
    is scaled so the logits on those images have unit standard deviation.

    With fresh running stats (mean 0, var 1) a random ResNet-152 in eval mode gives logits around
    1e8 and a ResNeXt-50 around 700: nothing like a trained network, whose logits are O(1)-O(10),
    so absolute tolerances and top-1 statistics would be meaningless. Deterministic for given
    weights and images; the conv weights themselves stay the seeded random ones.
    """
    import torch
    from torch import nn

    x = torch.from_numpy(images)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        if norms:
            model.train()
            model(x)
            for m, momentum in saved:
                m.momentum = momentum
        model.eval()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        std = float(model(x).std()) if linears else 0.0
        if std > 0 and math.isfinite(std):
            linears[-1].weight.mul_(1.0 / std)
            if linears[-1].bias is not None:
                linears[-1].bias.mul_(1.0 / std)
