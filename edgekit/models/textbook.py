"""The chapter's networks registered by name; textbook_nets.py builds them (imported lazily)."""

from __future__ import annotations

from edgekit.models.registry import ModelSpec, register_model


def _builder(function: str):
    def build(num_classes: int):
        from edgekit.models import textbook_nets

        return getattr(textbook_nets, function)(num_classes)

    build.__name__ = function
    return build


for _name, _family, _function, _doc in (
    ("textbook_resnet18", "resnet", "textbook_resnet", "the chapter's ResNet-18 (Residual blocks)"),
    ("textbook_resnext", "resnext", "textbook_resnext", "ResNet-18 layout with ResNeXt blocks, 16 groups"),
    ("textbook_densenet", "densenet", "textbook_densenet", "the chapter's DenseNet (4x4 convs, growth 32)"),
):
    register_model(
        ModelSpec(
            name=_name,
            family=_family,
            source="textbook",
            builder=_builder(_function),
            default_num_classes=10,
            description=_doc,
        )
    )
