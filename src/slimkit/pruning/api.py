"""``sk.prune_(model, config)``: look the handler up by the config's type and run it in place.

Handlers are registered explicitly with ``@PRUNERS.register(ConfigType)`` in the technique's
own module; ``slimkit.pruning`` imports every technique module so the registry is complete.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.registry import Registry

PRUNERS = Registry("pruning")


def prune_(model: nn.Module, config: Any, **kwargs: Any) -> nn.Module:
    """Apply ``config`` to ``model`` in place and return it (handlers may take data=...)."""
    from slimkit.preconditions import check_data_fits, check_kwargs, check_model, refuse_quantized

    handler = PRUNERS.lookup(config)
    check_model(model, "prune_")
    check_kwargs(kwargs, "prune_")
    refuse_quantized(
        model, "prune_", "prune first, then quantize: prune_(...), then quantize_(...)"
    )
    # Images of another size failed inside the handler with torch's own error; StaticInt8
    # and QAT had by then folded BatchNorm and swapped in fake-quant layers, in place.
    check_data_fits(model, kwargs.get("data"), "prune_")
    result = handler(model, config, **kwargs)
    return model if result is None else result
