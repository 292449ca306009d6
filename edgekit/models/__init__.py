"""The model zoo: the seed chapter's textbook networks and torchvision's production ones."""

from edgekit.models.registry import aliases, create_model, get_spec, list_models

__all__ = ["aliases", "create_model", "get_spec", "list_models"]
