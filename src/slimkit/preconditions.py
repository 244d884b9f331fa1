"""What every technique's entry point (``prune_``, ``quantize_``, ``decompose_``, ``train``,
``distill``) checks first, so bad input is a slimkit error naming the rule, not an
AttributeError or a shape error from deep inside torch, and never a silently ruined model:

- ``check_model``: an ``nn.Module`` with real (not meta-device) weights, all finite;
- ``refuse_quantized``: techniques that rewrite weights refuse layers already quantized (they
  would move them off their grid, or replace them by float layers, and drop the record);
- ``check_fits``: the model takes the data's inputs and has an output per class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, NumericsError
from slimkit.quantization.codes import QUANT_ATTR  # the record quantizers leave on a layer

# The keyword arguments technique handlers take (data=, example_inputs=, loss_fn=, show=).
KNOWN_KWARGS = ("data", "example_inputs", "loss_fn", "show")


def check_model(model: Any, call: str) -> nn.Module:
    """``model`` is an nn.Module whose parameters hold real, finite values."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{call} needs a torch nn.Module as the model, but got {type(model).__name__}; "
            "build one with slimkit.build_model('lenet5') or load one with slimkit.load(path)"
        )
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ConfigError(
                f"{call}: weight {name!r} is on the meta device (a shape without values); "
                "load or initialise real weights first (slimkit.load(path) or build_model)"
            )
        if p.is_floating_point() and not torch.isfinite(p.detach()).all():
            layer, _, leaf = name.rpartition(".")
            raise NumericsError(
                f"{call}: layer {layer or '(root)'!r} has NaN/inf in its {leaf}, so every "
                "result from it would too (did its training diverge?); train it again or load "
                "a finite model"
            )
    return model


def check_kwargs(kwargs: dict[str, Any], call: str) -> None:
    """A misspelled keyword (``dat=bundle``) was swallowed by the handlers' ``**_``."""
    import difflib

    for key in kwargs:
        if key not in KNOWN_KWARGS:
            near = difflib.get_close_matches(key, KNOWN_KWARGS, n=1)
            hint = f"did you mean {near[0]}=?" if near else f"valid: {list(KNOWN_KWARGS)}"
            raise ConfigError(f"{call} got an unknown keyword argument {key}=; {hint}")


def quantized_layers(model: nn.Module) -> list[str]:
    """Names of the layers a quantizer has already recorded (weights on a grid, int8 layers)."""
    return [n for n, m in model.named_modules() if isinstance(getattr(m, QUANT_ATTR, None), dict)]


def int8_layers(model: nn.Module) -> list[str]:
    """Names of the layers holding int8 quantization (StaticInt8, QATInt8, DynamicInt8).

    StaticInt8/QATInt8 mark each layer; DynamicInt8 keeps float layers (weights on the int8
    grid) and records them on the model only (``model.slimkit_int8["layers"]``)."""
    marked = [n for n, m in model.named_modules() if "int8" in (getattr(m, QUANT_ATTR, None) or {})]
    dynamic = getattr(model, "slimkit_int8", None) or {}
    return marked or list(dynamic.get("layers", []))


def refuse_quantized(model: nn.Module, call: str, fix: str) -> None:
    """``call`` would undo the quantization of some layer: refuse, naming it and the order."""
    names = quantized_layers(model)
    if names:
        raise ConfigError(
            f"{call} would rewrite layer(s) {names[:5]} that are already quantized (their "
            f"weights would leave the quantization grid, or the layer become float again); {fix}"
        )


def check_fits(model: nn.Module, data: Any, call: str) -> None:
    """One forward pass on a sample of ``data`` (a DataBundle): the model takes its inputs and
    gives at least ``num_classes`` outputs. Eval mode, no gradients: no state changes."""
    if not all(hasattr(data, a) for a in ("train", "test", "example_input")):
        raise ConfigError(
            f"{call} needs a DataBundle as data (slimkit.load_dataset('digits') or "
            f"slimkit.data.from_tensors(...)), but got {type(data).__name__}"
        )
    x = data.example_input(1)
    out = _probe(model, x, call)
    classes = getattr(data, "num_classes", None)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and isinstance(classes, int):
        if out.shape[1] < classes:
            raise ConfigError(
                f"{call}: the model has {out.shape[1]} outputs, but the data has {classes} "
                f"classes; build it with num_classes={classes}"
            )


def check_data_fits(model: nn.Module, data: Any, call: str) -> None:
    """``check_fits`` for a DataBundle; for a DataLoader (batches of (x, y) or x) or a tensor of
    inputs, one forward pass on its first sample. Other kinds are left to the handler. The
    torch random state is kept, so a shuffled loader's later order is as it would have been."""
    if data is None:
        return
    if all(hasattr(data, a) for a in ("train", "test", "example_input")):
        check_fits(model, data, call)
        return
    from torch.utils.data import DataLoader

    if isinstance(data, torch.Tensor):
        x = data[:1]
    elif isinstance(data, DataLoader):
        with torch.random.fork_rng(devices=[]):
            batch = next(iter(data), None)
        if batch is None:
            raise ConfigError(f"{call}: the data loader yields no batch; pass a non-empty one")
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(x, torch.Tensor):
            return
        x = x[:1]
    else:
        return
    _probe(model, x, call)


def _probe(model: nn.Module, x: torch.Tensor, call: str) -> Any:
    """model(x) in eval mode without gradients (state kept); a ConfigError naming the input
    shape when the model does not take it."""
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        fix = (
            f"; use a model built for these images (build_model(name, "
            f"image_size={x.shape[-1]}, in_channels={x.shape[1]}))"
            if x.dim() == 4
            else ""
        )
        raise ConfigError(
            f"{call}: the model does not take the data's inputs of shape {tuple(x.shape)} "
            f"({str(exc).splitlines()[0]}){fix}"
        ) from None
    finally:
        model.train(was_training)
