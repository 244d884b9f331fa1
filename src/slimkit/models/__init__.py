"""Model zoo and module-tree description (rebuild without pickle)."""

from slimkit.models.spec import build, describe, register_leaf
from slimkit.models.zoo import ZOO, build_model, zoo_names

__all__ = ["ZOO", "build", "build_model", "describe", "register_leaf", "zoo_names"]
