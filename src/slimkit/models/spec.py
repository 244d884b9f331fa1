"""Describe a model's module tree as JSON and rebuild it, without pickling.

A model from the zoo is rebuilt from ``slimkit_arch`` (zoo name + kwargs); then every place where
compression changed the tree (a pruned Conv2d with fewer channels, a Linear replaced by a
two-layer Sequential, a gate module added) is rebuilt from the JSON node of that layer. Only the
leaf types listed in ``LEAVES`` (plus containers) can be built from JSON; other classes must be
present in the fresh zoo model, where they are kept and recursed into.

Node shape::

    {"type": "Conv2d", "args": {...}}                       # a buildable leaf
    {"type": "Sequential", "children": {"0": node, ...}}    # a container
    {"type": "@LeNet5", "children": {...}}                  # a class the zoo builds itself
    + optional "buffers": {name: [shape, dtype]}  (buffers the fresh module lacks)
    + optional "attrs": {name: json}              (``slimkit_*`` attributes, e.g. quant info)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError

ArgsFn = Callable[[nn.Module], dict[str, Any]]


def _conv_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.Conv2d)
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
    }


def _bn_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


LEAVES: dict[str, tuple[type[nn.Module], ArgsFn]] = {
    "Conv2d": (nn.Conv2d, _conv_args),
    "Linear": (
        nn.Linear,
        lambda m: {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        },
    ),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_args),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_args),
    "LayerNorm": (
        nn.LayerNorm,
        lambda m: {
            "normalized_shape": list(m.normalized_shape),  # type: ignore[arg-type]
            "eps": m.eps,
            "elementwise_affine": m.elementwise_affine,
        },
    ),
    "ReLU": (nn.ReLU, lambda m: {}),
    "ReLU6": (nn.ReLU6, lambda m: {}),
    "GELU": (nn.GELU, lambda m: {}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Hardswish": (nn.Hardswish, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "Identity": (nn.Identity, lambda m: {}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "MaxPool2d": (
        nn.MaxPool2d,
        lambda m: {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding},
    ),
    "AvgPool2d": (
        nn.AvgPool2d,
        lambda m: {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding},
    ),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {"output_size": m.output_size}),
}

CONTAINERS: dict[str, type[nn.Module]] = {"Sequential": nn.Sequential, "ModuleList": nn.ModuleList}


def register_leaf(name: str, cls: type[nn.Module], args: ArgsFn) -> None:
    """Let a technique's own module type (a gate, a fused block) be described and rebuilt.

    ``cls(**args(module))`` must rebuild a module with the same parameter and buffer shapes.
    """
    if name in LEAVES and LEAVES[name][0] is not cls:
        raise RuntimeError(f"leaf type {name!r} is registered twice")
    LEAVES[name] = (cls, args)


def _leaf_name(m: nn.Module) -> str | None:
    for name, (cls, _) in LEAVES.items():
        if type(m) is cls:
            return name
    return None


def _json_attrs(m: nn.Module) -> dict[str, Any]:
    return {
        k: copy.deepcopy(v)
        for k, v in vars(m).items()
        if k.startswith("slimkit_") and k != "slimkit_arch"
    }


def describe_module(m: nn.Module) -> dict[str, Any]:
    leaf = _leaf_name(m)
    node: dict[str, Any]
    if leaf is not None:
        node = {"type": leaf, "args": LEAVES[leaf][1](m)}
    else:
        kind = type(m).__name__
        node = {"type": kind if kind in CONTAINERS and type(m) is CONTAINERS[kind] else "@" + kind}
        node["children"] = {n: describe_module(c) for n, c in m.named_children()}
    own = {
        n: [list(b.shape), str(b.dtype).removeprefix("torch.")]
        for n, b in m.named_buffers(recurse=False)
        if b is not None
    }
    if own:
        node["buffers"] = own
    attrs = _json_attrs(m)
    if attrs:
        node["attrs"] = attrs
    return node


def describe(model: nn.Module) -> dict[str, Any]:
    """JSON description of ``model``: its zoo origin and its module tree."""
    arch = getattr(model, "slimkit_arch", None)
    if arch is None:
        raise ConfigError(
            f"{type(model).__name__} was not built by slimkit's zoo, so it cannot be rebuilt from a "
            "file alone; build it with slimkit.models.build_model(...), or save weights only and "
            "pass model=... when loading"
        )
    return {"arch": copy.deepcopy(arch), "tree": describe_module(model)}


def _build_node(node: dict[str, Any], fresh: nn.Module | None, path: str) -> nn.Module:
    kind = node["type"]
    if kind in LEAVES:
        cls, _ = LEAVES[kind]
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in node["args"].items()}
        module = cls(**args)
    elif kind in CONTAINERS:
        children = node.get("children", {})
        fresh_children = (
            dict(fresh.named_children())
            if fresh is not None and type(fresh) is CONTAINERS[kind]
            else {}
        )
        built = {
            n: _build_node(c, fresh_children.get(n), f"{path}.{n}") for n, c in children.items()
        }
        module = CONTAINERS[kind]()
        for n, c in built.items():
            module.add_module(n, c)
    else:
        want = kind.removeprefix("@")
        if fresh is None or type(fresh).__name__ != want:
            raise ConfigError(
                f"cannot rebuild layer {path or '<root>'!r} of type {want}: it is not a slimkit leaf "
                f"type ({sorted(LEAVES)}) and the zoo model has no such layer there"
            )
        module = fresh
        current = dict(fresh.named_children())
        for n, c in node.get("children", {}).items():
            setattr(module, n, _build_node(c, current.get(n), f"{path}.{n}" if path else n))
        for n in set(current) - set(node.get("children", {})):
            delattr(module, n)
    for name, (shape, dtype) in node.get("buffers", {}).items():
        existing = module._buffers.get(name)
        if existing is None or list(existing.shape) != shape:
            module.register_buffer(name, torch.zeros(shape, dtype=getattr(torch, dtype)))
    for k, v in node.get("attrs", {}).items():
        setattr(module, k, copy.deepcopy(v))
    return module


def build(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the module tree described by :func:`describe` (weights not loaded)."""
    from slimkit.models.zoo import build_model

    arch = spec["arch"]
    fresh = build_model(arch["zoo"], **arch.get("kwargs", {}))
    model = _build_node(spec["tree"], fresh, "")
    model.slimkit_arch = copy.deepcopy(arch)  # type: ignore[assignment]
    return model
