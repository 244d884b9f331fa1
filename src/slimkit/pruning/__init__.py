"""Pruning: every technique module is imported here so the registry is complete."""

from slimkit.pruning.api import PRUNERS, prune_

__all__ = ["PRUNERS", "prune_"]
