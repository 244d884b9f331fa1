"""``sk.quantize_(model, config)``: look the handler up by the config's type and run it in place.

Handlers are registered explicitly with ``@QUANTIZERS.register(ConfigType)`` in the technique's
own module; ``slimkit.quantization`` imports every technique module so the registry is complete.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.errors import ConfigError
from slimkit.registry import Registry

QUANTIZERS = Registry("quantization")


def quantize_(model: nn.Module, config: Any, **kwargs: Any) -> nn.Module:
    """Apply ``config`` to ``model`` in place and return it (handlers may take data=...)."""
    from slimkit.preconditions import check_data_fits, check_kwargs, check_model, int8_layers

    handler = QUANTIZERS.lookup(config)
    check_model(model, "quantize_")
    check_kwargs(kwargs, "quantize_")
    int8 = int8_layers(model)  # DynamicInt8's too: a second quantizer went out the dynamic way
    if int8:
        raise ConfigError(
            f"quantize_: the model already holds int8 layers {int8[:5]}; quantizing them "
            "again would drop it. Apply one quantizer to a float model"
        )
    # Images of another size failed inside the handler with torch's own error; StaticInt8
    # and QAT had by then folded BatchNorm and swapped in fake-quant layers, in place.
    check_data_fits(model, kwargs.get("data"), "quantize_")
    result = handler(model, config, **kwargs)
    return model if result is None else result
