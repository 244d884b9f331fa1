"""``sk.decompose_(model, config)``: look the handler up by the config's type and run it in place.

Handlers are registered explicitly with ``@DECOMPOSERS.register(ConfigType)`` in the technique's
own module; ``slimkit.decomposition`` imports every technique module so the registry is complete.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.errors import TargetError
from slimkit.registry import Registry

DECOMPOSERS = Registry("decomposition")

# What each factorisation takes (its candidates; the plan gets a row for each one considered).
LAYER_KINDS = {
    "SVDDecomposition": "Linear and 1x1 Conv2d layers",
    "TuckerDecomposition": "ungrouped Conv2d layers with kernels larger than 1x1",
    "CPDecomposition": "ungrouped Conv2d layers with kernels larger than 1x1",
    "DepthwiseSeparable": "ungrouped Conv2d layers with kernels larger than 1x1",
}


def decompose_(model: nn.Module, config: Any, **kwargs: Any) -> nn.Module:
    """Apply ``config`` to ``model`` in place and return it (handlers may take data=...).

    A factorisation that finds no layer it takes is a TargetError, not a silent no-op; layers
    already quantized are refused (the float factors would drop their quantization)."""
    from slimkit.decomposition.base import decomposition_plan
    from slimkit.preconditions import check_fits, check_kwargs, check_model, refuse_quantized

    handler = DECOMPOSERS.lookup(config)
    check_model(model, "decompose_")
    check_kwargs(kwargs, "decompose_")
    refuse_quantized(model, "decompose_", "decompose first, then quantize the factors")
    data = kwargs.get("data")
    bundle = all(hasattr(data, a) for a in ("train", "test", "example_input"))
    # A DataLoader (no .calib: refused as not a DataBundle), or images of another size: was a
    # raw error, or a skipped BN recalibration, after the layers were replaced.
    if data is not None and (bundle or not hasattr(data, "calib")):
        check_fits(model, data, "decompose_")
    before = decomposition_plan(model)
    result = handler(model, config, **kwargs)
    model = model if result is None else result
    kind = LAYER_KINDS.get(type(config).__name__)
    after = decomposition_plan(model)
    if kind is not None and all(before.get(k) == v for k, v in after.items()):
        fix = (
            "check its targets/ignore"
            if type(config).__name__ == "SVDDecomposition"
            else "use SVDDecomposition (method svd) for Linear layers"
        )
        raise TargetError(
            f"{type(config).__name__} found no layer to decompose: it factorises {kind}, and "
            f"the model has none its targets allow; {fix}"
        )
    return model
