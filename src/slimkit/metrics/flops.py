"""FLOPs and MACs measured by ``torch.utils.flop_counter`` on one forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example_input`` (one multiply-add = 2 FLOPs)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example_input)
    model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    return count_flops(model, example_input) // 2


@torch.no_grad()
def flops_by_module(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """FLOPs per leaf module (by qualified name) measured with forward hooks."""
    out: dict[str, int] = {}
    hooks = []

    def make(name: str):
        def hook(mod, inp, _out):
            with FlopCounterMode(display=False) as c:
                mod.__class__.forward(mod, *inp)
            out[name] = out.get(name, 0) + int(c.get_total_flops())

        return hook

    for name, m in model.named_modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_hook(make(name)))
    try:
        model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    return out
