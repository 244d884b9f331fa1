"""``sk.decompose_(model, config)``: look the handler up by the config's type and run it in place.

Handlers are registered explicitly with ``@DECOMPOSERS.register(ConfigType)`` in the technique's
own module; ``slimkit.decomposition`` imports every technique module so the registry is complete.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.registry import Registry

DECOMPOSERS = Registry("decomposition")


def decompose_(model: nn.Module, config: Any, **kwargs: Any) -> nn.Module:
    """Apply ``config`` to ``model`` in place and return it (handlers may take data=...)."""
    handler = DECOMPOSERS.lookup(config)
    result = handler(model, config, **kwargs)
    return model if result is None else result
