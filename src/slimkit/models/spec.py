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
import math
import os
from collections.abc import Callable, Mapping, Sequence
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


# Leaf arguments that count channels / features: torch accepts 0 (and, for some, negative or
# huge values until it allocates), slimkit never writes less than 1.
_COUNT_ARGS = frozenset(
    {"in_channels", "out_channels", "in_features", "out_features", "num_features", "groups"}
    | {"channels", "hidden"}
)
_GEOMETRY_ARGS = {"kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0}
_FIX = "the manifest was edited or is corrupt; re-save the model with slimkit"


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(path: str) -> str:
    return repr(path or "<root>")


def _check_leaf_args(kind: str, args: Any, path: str) -> None:
    if not isinstance(args, dict):
        raise ConfigError(
            f"layer {_where(path)}: {kind} 'args' must be a JSON object, but got {_short(args)}; "
            f"{_FIX}"
        )
    for key in sorted(_COUNT_ARGS & set(args)):
        v = args[key]
        if not _is_int(v, 1):
            raise ConfigError(
                f"layer {_where(path)}: {kind} {key} must be an integer >= 1, but got {_short(v)}; "
                f"{_FIX}"
            )
    # Geometry torch accepts when the layer is built but fails on (a stride of 0, a negative
    # padding) only at the first forward pass.
    for key, low in _GEOMETRY_ARGS.items():
        if key not in args or (key == "padding" and isinstance(args[key], str)):
            continue  # padding="same" / "valid": torch checks the string itself
        v = args[key]
        items = v if isinstance(v, list) else [v]
        if not items or not all(_is_int(i, low) for i in items):
            raise ConfigError(
                f"layer {_where(path)}: {kind} {key} must be an integer >= {low} or a list of them, "
                f"but got {_short(v)}; {_FIX}"
            )
    eps = args.get("eps", 1.0)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ConfigError(
            f"layer {_where(path)}: {kind} eps must be a number > 0, but got {_short(eps)}; {_FIX}"
        )


def _make_leaf(kind: str, node: dict[str, Any], path: str) -> nn.Module:
    raw = node.get("args", {})
    _check_leaf_args(kind, raw, path)
    cls, _ = LEAVES[kind]
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return cls(**args)
    except Exception as exc:  # torch's own argument checks: TypeError, ValueError, RuntimeError
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise ConfigError(
            f"layer {_where(path)}: {kind} rejects the arguments {_short(raw, 200)} "
            f"({type(exc).__name__}: {reason}); {_FIX}"
        ) from None


def _buffer(path: str, name: str, entry: Any) -> tuple[list[int], torch.dtype]:
    shape, dtype = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
    dt = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not isinstance(dt, torch.dtype)
    ):
        raise ConfigError(
            f"layer {_where(path)}: buffer {name!r} must be [shape (list of ints >= 0), dtype name], "
            f"but got {_short(entry)}; {_FIX}"
        )
    return shape, dt


def _build_node(node: Any, fresh: nn.Module | None, path: str) -> nn.Module:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise ConfigError(
            f"layer {_where(path)}: a spec node must be a JSON object with a string 'type', but got "
            f"{_short(node)}; {_FIX}"
        )
    kind = node["type"]
    children = node.get("children", {})
    if not isinstance(children, dict):
        raise ConfigError(
            f"layer {_where(path)}: 'children' must be a JSON object, but got {_short(children)}; "
            f"{_FIX}"
        )
    if kind in LEAVES:
        module = _make_leaf(kind, node, path)
    elif kind in CONTAINERS:
        fresh_children = (
            dict(fresh.named_children())
            if fresh is not None and type(fresh) is CONTAINERS[kind]
            else {}
        )
        built = {
            n: _build_node(c, fresh_children.get(n), f"{path}.{n}" if path else n)
            for n, c in children.items()
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
        for n, c in children.items():
            setattr(module, n, _build_node(c, current.get(n), f"{path}.{n}" if path else n))
        for n in set(current) - set(children):
            delattr(module, n)
    buffers = node.get("buffers", {})
    attrs = node.get("attrs", {})
    if not isinstance(buffers, dict) or not isinstance(attrs, dict):
        raise ConfigError(
            f"layer {_where(path)}: 'buffers' and 'attrs' must be JSON objects, but got "
            f"{_short(buffers)} and {_short(attrs)}; {_FIX}"
        )
    for name, entry in buffers.items():
        shape, dtype = _buffer(path, name, entry)
        existing = module._buffers.get(name)
        if existing is None or list(existing.shape) != shape:
            module.register_buffer(name, torch.zeros(shape, dtype=dtype))
    for k, v in attrs.items():
        if not k.startswith("slimkit_"):  # describe() only writes slimkit_* attributes
            raise ConfigError(
                f"layer {_where(path)}: attribute {k!r} cannot be set from a file (only slimkit_* "
                f"attributes are saved); {_FIX}"
            )
        setattr(module, k, copy.deepcopy(v))
    return module


def _build(spec: Any) -> nn.Module:
    from slimkit.models.zoo import build_model

    if not isinstance(spec, dict) or not isinstance(spec.get("arch"), dict):
        raise ConfigError(
            f"a model spec must be a JSON object with an 'arch' object, but got {_short(spec)}; "
            f"{_FIX}"
        )
    arch = spec["arch"]
    kwargs = arch.get("kwargs", {})
    if not isinstance(arch.get("zoo"), str) or not isinstance(kwargs, dict):
        raise ConfigError(
            f"the spec's arch must be {{'zoo': name, 'kwargs': {{...}}}}, but got {_short(arch)}; "
            f"{_FIX}"
        )
    try:
        fresh = build_model(arch["zoo"], **kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # a zoo builder's torch layers rejecting the kwargs
        raise ConfigError(
            f"zoo model {arch['zoo']!r} cannot be built with {_short(kwargs, 200)} "
            f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); {_FIX}"
        ) from None
    model = _build_node(spec.get("tree"), fresh, "")
    model.slimkit_arch = copy.deepcopy(arch)  # type: ignore[assignment]
    return model


def memory_limit() -> int | None:
    """Bytes of physical memory, the most a rebuilt model may ask for (None when unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None


def _check_shapes(meta: nn.Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse a spec whose tensors differ from the file's, naming the layers (up to 3)."""
    want = {k: list(v.shape) for k, v in meta.state_dict().items()}
    have = {k: list(v) for k, v in shapes.items()}
    problems = []
    for k in want.keys() - have.keys():
        problems.append(f"{k!r} (shape {want[k]}) is in the spec but not in the file")
    for k in have.keys() - want.keys():
        problems.append(f"{k!r} (shape {have[k]}) is in the file but not in the spec")
    for k in want.keys() & have.keys():
        if want[k] != have[k]:
            problems.append(f"{k!r} has shape {want[k]} in the spec but {have[k]} in the file")
    if problems:
        problems.sort()
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ConfigError(
            "the model spec and the stored tensors must match, but "
            + "; ".join(problems[:3])
            + f"{more}; {_FIX}"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.2f} MiB"


def _check_size(meta: nn.Module, limit: int | None) -> None:
    tensors = [*meta.named_parameters(), *meta.named_buffers()]
    sizes = [(math.prod(t.shape) * t.element_size(), n, list(t.shape)) for n, t in tensors]
    total = sum(s for s, _, _ in sizes)
    if limit is not None and total > limit:
        _, name, shape = max(sizes)
        raise ConfigError(
            f"the model spec asks for {_gib(total)} of weights, more than this machine's memory "
            f"({_gib(limit)}); the largest tensor is {name!r} with "
            f"shape {shape}; {_FIX}"
        )


def restore_dtypes(model: nn.Module, dtypes: Mapping[str, torch.dtype]) -> None:
    """Give each floating parameter / buffer of ``model`` the floating dtype it was saved in.

    ``dtypes`` maps state-dict names to the stored tensors' dtypes. A rebuilt model is in torch's
    default dtype, so without this a ``.double()`` model (or one bf16 layer) loaded as float32.
    Integer and bool tensors (quantization codes, counters) keep the dtype the spec gave them.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    for kind in ("_parameters", "_buffers"):
        for prefix, module in modules.items():
            for leaf, t in getattr(module, kind).items():
                want = dtypes.get(f"{prefix}.{leaf}" if prefix else leaf)
                if t is None or want is None or want == t.dtype:
                    continue
                if not (t.is_floating_point() and want.is_floating_point):
                    continue
                if kind == "_parameters":
                    # In place on the Parameter object, so tied weights stay one tensor.
                    t.data = t.data.to(want)
                else:
                    module._buffers[leaf] = t.to(want)


def build(
    spec: dict[str, Any],
    shapes: Mapping[str, Sequence[int]] | None = None,
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> nn.Module:
    """Rebuild the module tree described by :func:`describe` (weights not loaded).

    The spec is first built on torch's meta device (no memory), which runs every layer's own
    argument checks; then its tensor shapes are compared with ``shapes`` (the stored tensors, when
    given) and its total size with the machine's memory. Only a spec that passes is built for
    real. Every problem is a ConfigError naming the layer and the value. ``dtypes`` (the stored
    tensors' dtypes, by state-dict name) are given to the floating parameters and buffers (see
    :func:`restore_dtypes`), so loading the weights does not round them to float32.
    """
    try:
        with torch.device("meta"):
            meta = _build(spec)
            if dtypes is not None:
                restore_dtypes(meta, dtypes)  # before the size check: float64 takes twice fp32
    except ConfigError:
        raise
    except Exception as exc:  # anything else a hand-edited spec can provoke
        raise ConfigError(
            f"the model spec cannot be built ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}); {_FIX}"
        ) from None
    if shapes is not None:
        _check_shapes(meta, shapes)
    _check_size(meta, memory_limit())
    del meta
    model = _build(spec)
    if dtypes is not None:
        restore_dtypes(model, dtypes)
    return model
