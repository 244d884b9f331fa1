"""Forward hooks by layer name with a strict lifecycle (llm-compressor ``HooksMixin`` style).

``FeatureHooks(model, ["conv2", "layers.1"])`` resolves the names at once (a wrong name is a
TargetError listing near matches), ``attach()`` registers one forward hook per layer, every
forward then stores that layer's output under its name, and ``remove()`` takes every hook off
again. Use it as a context manager so hooks go even when training raises::

    with FeatureHooks(student, names) as hooks:
        student(x)
        hooks.get("conv2")  # (B, C, H, W)

States: idle -> attached -> removed. Attaching twice, attaching after removal or reading a
feature while not attached raise SlimkitError; ``remove()`` is safe to call in any state.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from slimkit.config import get_module
from slimkit.errors import SlimkitError


class HookState(str, enum.Enum):
    IDLE = "idle"
    ATTACHED = "attached"
    REMOVED = "removed"


def _first_tensor(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise SlimkitError(
        f"layer {name!r} returned {type(output).__name__}, not a tensor; pick a layer whose "
        "output is a tensor (or a tuple starting with one)"
    )


class FeatureHooks:
    """Capture the outputs of named layers of one model during its forward passes."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))  # unique, in order
        # Resolve now: a typo fails before any hook exists.
        self.modules = {n: get_module(model, n) for n in self.names}
        self.state = HookState.IDLE
        self._handles: list[RemovableHandle] = []
        self._features: dict[str, torch.Tensor] = {}

    def attach(self) -> FeatureHooks:
        if self.state is not HookState.IDLE:
            raise SlimkitError(
                f"FeatureHooks can only attach once, from state 'idle', but the state is "
                f"{self.state.value!r}; create a new FeatureHooks instead"
            )
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        self.state = HookState.ATTACHED
        return self

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._features[name] = _first_tensor(output, name)

        return hook

    def remove(self) -> None:
        """Remove every hook this object registered; safe in any state."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._features.clear()
        self.state = HookState.REMOVED

    def clear(self) -> None:
        """Forget captured outputs (keep the hooks)."""
        self._features.clear()

    def get(self, name: str) -> torch.Tensor:
        if self.state is not HookState.ATTACHED:
            raise SlimkitError(
                f"cannot read feature {name!r}: hooks are {self.state.value}, not attached"
            )
        if name not in self._features:
            raise SlimkitError(
                f"layer {name!r} produced no output in the last forward pass; it may be unused "
                f"by the model's forward. Captured layers: {sorted(self._features)}"
            )
        return self._features[name]

    @property
    def features(self) -> dict[str, torch.Tensor]:
        return dict(self._features)

    def __enter__(self) -> FeatureHooks:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()
