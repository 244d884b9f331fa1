"""SmoothQuant-style scale migration for BERT encoders, applied in PyTorch before export.

For a Linear ``y = x W^T + b`` with input channels j, activation outliers make per-tensor int8
of ``x`` coarse. With ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)`` we compute
``(x / s) (W * s)^T``: the activation gets flatter, the weight (quantized per output channel)
absorbs the range. Where ``1 / s`` folds exactly into a preceding linear op it costs nothing:

- ``attention.output.dense``: its input is the attention context ``P @ V``, linear in V, so
  ``1 / s`` folds into the rows of ``value`` (weight and bias), per channel.
- ``intermediate.dense`` and ``output.dense``: their inputs come from a LayerNorm that also
  feeds the residual (post-LN BERT) or from GELU, so nothing folds; the scaling becomes an
  explicit elementwise ``Mul`` before the MatMul (``InputScaledLinear``), cheap next to it.
- Q/K/V are left alone: a Mul there would block ORT's Attention fusion.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.config import check_range, set_module
from slimkit.errors import ConfigError

SMOOTHABLE = ("attention.output.dense", "intermediate.dense", "output.dense")


class InputScaledLinear(nn.Module):
    """``linear(x * inv_scale)`` where ``linear``'s weight already holds the scale.

    weight (out, in) * s[None, :]; inv_scale (in,) = 1 / s.
    """

    inv_scale: torch.Tensor

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        with torch.no_grad():
            linear.weight.mul_(scale[None, :])  # (out, in) * (1, in)
        self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def check_batches(batches: Any) -> list[dict]:
    """``batches``: a non-empty list of tokenized batches, each {"input_ids", "attention_mask"}:
    (B, T) tensors (sentences here failed with "string indices must be integers")."""
    ok = (
        isinstance(batches, (list, tuple))
        and len(batches) > 0
        and all(
            isinstance(b, dict)
            and isinstance(b.get("input_ids"), torch.Tensor)
            and isinstance(b.get("attention_mask"), torch.Tensor)
            for b in batches
        )
    )
    if not ok:
        first = batches[0] if isinstance(batches, (list, tuple)) and batches else batches
        raise ConfigError(
            "batches must be a non-empty list of tokenized batches {'input_ids', "
            f"'attention_mask'}}, but got {type(batches).__name__} starting {first!r:.60}; "
            "write [tokenize(tokenizer, sentences[i : i + 32], max_length) for i in "
            "range(0, len(sentences), 32)]"
        )
    return list(batches)


@torch.no_grad()
def input_absmax(
    model: nn.Module, names: Iterable[str], batches: Iterable[dict]
) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of the Linears called ``names`` over ``batches`` -> {name: (in,)}."""
    modules = dict(model.named_modules())
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:

        def hook(_m, args, _out, name=name):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)  # (B*T, in) -> (in,)
            stats[name] = torch.maximum(stats[name], x) if name in stats else x

        hooks.append(modules[name].register_forward_hook(hook))
    try:
        for batch in batches:
            model(batch["input_ids"], batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def smooth_encoder_(
    module: Any, batches: list[dict], alpha: float = 0.5, kinds: Iterable[str] = SMOOTHABLE
) -> list[str]:
    """Migrate activation outliers into weights in place; return the smoothed layer names.

    ``module`` is a SentenceEncoder (``module.model.encoder.layer[i]``); ``kinds`` choose among
    ``SMOOTHABLE`` suffixes.
    """
    from slimkit.transformers.embed import check_sentence_encoder

    check_sentence_encoder(module)
    check_range("alpha", alpha, 0.0, 1.0)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in SMOOTHABLE]
    if bad:
        raise ConfigError(f"smoothing kinds must be among {list(SMOOTHABLE)}, but got {bad}")
    batches = check_batches(batches)
    prefix = "model.encoder.layer"
    names = [f"{prefix}.{i}.{k}" for i in range(len(module.model.encoder.layer)) for k in kinds]
    modules = dict(module.named_modules())
    # A second smoothing (say smooth_encoder_ and then quantize_encoder, which smooths by
    # default) met an InputScaledLinear and stopped on a bare assert.
    done_before = [n for n in names if type(modules[n]) is not nn.Linear]
    if done_before:
        raise ConfigError(
            f"{done_before[0]} is already smoothed ({type(modules[done_before[0]]).__name__}); "
            "smooth a model once: pass the unsmoothed model, or EncoderInt8(smooth={'enabled': "
            "False}) to quantize one smoothed already"
        )
    stats = input_absmax(module, names, batches)
    done = []
    for name in names:
        lin = modules[name]
        w_max = lin.weight.abs().amax(0).clamp(min=1e-5)  # (out, in) -> (in,)
        s = (stats[name].clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-3, max=1e3)
        if name.endswith("attention.output.dense"):
            value = modules[name.replace("attention.output.dense", "attention.self.value")]
            value.weight.div_(s[:, None])  # (all_head, hidden): context channel j = V channel j
            value.bias.div_(s)
            lin.weight.mul_(s[None, :])
        else:
            set_module(module, name, InputScaledLinear(lin, s))
        done.append(name)
    return done
