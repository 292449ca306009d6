"""The model zoo: the seed chapter's textbook networks and torchvision's production ones.

Importing the package registers the families (cheap: no torch until a model is built); the
registry itself imports no family, so there is no import circle.
"""

from edgekit.models import textbook, torchvision  # noqa: F401  (register the families)
from edgekit.models.registry import aliases, create_model, get_spec, list_models

__all__ = ["aliases", "create_model", "get_spec", "list_models"]
