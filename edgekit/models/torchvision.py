"""torchvision's production ResNet, ResNeXt and DenseNet, registered by name."""

from __future__ import annotations

from edgekit.models.registry import ModelSpec, register_model

# name -> (family, torchvision weights enum, aliases)
_TORCHVISION_MODELS = {
    "resnet18": ("resnet", "ResNet18_Weights", ("resnet",)),
    "resnet34": ("resnet", "ResNet34_Weights", ()),
    "resnet50": ("resnet", "ResNet50_Weights", ()),
    "resnet101": ("resnet", "ResNet101_Weights", ()),
    "resnet152": ("resnet", "ResNet152_Weights", ()),
    "resnext50_32x4d": ("resnext", "ResNeXt50_32X4D_Weights", ("resnext",)),
    "resnext101_32x8d": ("resnext", "ResNeXt101_32X8D_Weights", ()),
    "resnext101_64x4d": ("resnext", "ResNeXt101_64X4D_Weights", ()),
    "densenet121": ("densenet", "DenseNet121_Weights", ("densenet",)),
    "densenet161": ("densenet", "DenseNet161_Weights", ()),
    "densenet169": ("densenet", "DenseNet169_Weights", ()),
    "densenet201": ("densenet", "DenseNet201_Weights", ()),
}


def _builder(name: str):
    def build(num_classes: int):
        import torchvision.models

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    build.__name__ = f"build_{name}"
    return build


for _name, (_family, _weights, _aliases) in _TORCHVISION_MODELS.items():
    register_model(
        ModelSpec(
            name=_name,
            family=_family,
            source="torchvision",
            builder=_builder(_name),
            default_num_classes=1000,
            torchvision_weights=_weights,
            aliases=_aliases,
            description=f"torchvision.models.{_name}",
        )
    )
