"""Decomposition: every technique module is imported here so the registry is complete."""

from slimkit.decomposition.api import DECOMPOSERS, decompose_

__all__ = ["DECOMPOSERS", "decompose_"]
