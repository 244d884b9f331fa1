"""Base config class and layer targeting.

A technique is a frozen dataclass config (validated in ``__post_init__``) plus one handler that a
:class:`slimkit.registry.Registry` looks up by the config's type.

Layers are chosen by fully-qualified module name (``model.named_modules()``):
an exact name matches first, then a ``"re:<regex>"`` pattern (``re.fullmatch``); ``ignore`` wins
over ``targets``. An empty ``targets`` means "every layer of the supported types".
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

from slimkit.errors import ConfigError, TargetError


@dataclasses.dataclass(frozen=True)
class SlimConfig:
    """Base of every technique config: frozen, validated at construction, JSON-serialisable."""

    kind: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        # Lists given by YAML or users become tuples so the config stays hashable and frozen.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Flags and name lists, the fields ``validate`` seldom checks: a YAML ``packed: yes``
        (a string) or ``exclude: layer.0`` (one string, which would be read as characters) gets
        a ConfigError here instead of acting as something else later."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # f.type is the annotation's text under ``from __future__ import annotations``
            kind = f.type if isinstance(f.type, str) else str(f.type)
            if kind in ("bool", "<class 'bool'>") and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, but got {value!r}")
            if kind == "tuple[str, ...]":
                if isinstance(value, str):
                    raise ConfigError(
                        f"{f.name} must be a list of strings, but got the string {value!r}; "
                        f"write [{value!r}]"
                    )
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{f.name} must be a list of strings, but got {value!r}")

    def validate(self) -> None:
        """Override to check values; raise ConfigError stating rule, value and fix."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, SlimConfig):
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, Mapping):  # `int8: true` in a recipe: was "'bool' ... not iterable"
            raise ConfigError(
                f"{cls.__name__} options must be a mapping of option: value (valid options "
                f"{sorted(names)}), but got {type(data).__name__}: {data!r:.80}"
            )
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} got unknown option(s) {unknown}; valid options are {sorted(names)}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    high_open: bool = False,
    low_open: bool = False,
) -> None:
    """Check ``low <= value <= high`` (with open ends when asked) and that value is a real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, but got {value!r}")
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (lo_ok and hi_ok):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in {lb}{low}, {high}{hb}, but got {value!r}")


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer in {low}..{high}, but got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in {low}..{high}, but got {value}")


def check_threads(threads: object) -> int:
    """``threads`` is a whole number in 1..256 (returned). torch and ONNX Runtime read 0 as "a
    default pool" (ORT's: every core), so a timing reported with threads=0 described nothing
    that ran."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
        raise ConfigError(
            f"threads must be 1..256, but got {threads!r}; pass the number of intra-op threads "
            f"(--threads N), e.g. 1 for steady timings or the machine's {os.cpu_count()} cores"
        )
    return threads


def parse_enum(enum_cls: type[enum.Enum], value: Any, field: str):
    """Turn a YAML string into a str Enum member; a typo lists the valid choices."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        valid = [m.value for m in enum_cls]
        raise ConfigError(f"{field} must be one of {valid}, but got {value!r}") from None


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def _check_patterns(patterns: Iterable[str], field: str) -> None:
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{field} entries must be non-empty strings, but got {p!r}")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ConfigError(f"{field} pattern {p!r} is not a valid regex: {exc}") from None


def select_modules(
    model: nn.Module,
    targets: Sequence[str] = (),
    ignore: Sequence[str] = (),
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> dict[str, nn.Module]:
    """Return ``{qualified_name: module}`` of the layers chosen by ``targets``/``ignore``.

    Precedence: ``ignore`` wins (a pattern that names a block ignores every layer inside it);
    then a layer is chosen when some target matches it by exact name or ``re:`` regex; with no
    targets every layer of ``types`` is chosen. Every target pattern must choose at least one
    layer of ``types``, and every ignore pattern name some module of the model, else a
    TargetError lists near matches.
    """
    _check_patterns(targets, "targets")
    _check_patterns(ignore, "ignore")
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, types)}
    chosen: dict[str, nn.Module] = {}
    for pattern in targets:
        hits = [n for n in candidates if _matches(n, pattern)]
        if not hits:
            raise TargetError(no_match_message(pattern, list(candidates), types))
        for n in hits:
            chosen[n] = candidates[n]
    if not targets:
        chosen = dict(candidates)
    every = [n for n, _ in model.named_modules() if n] if ignore else []
    for pattern in ignore:
        # An ignore pattern must name some layer of the model (of any type: ignoring a layer
        # this technique skips anyway is harmless), so a typo is an error, not a silent no-op.
        if not any(_matches(n, pattern) for n in every):
            raise TargetError(no_match_message(pattern, every, role="ignore"))
        # A pattern naming a block (``layers.0``) ignores every layer inside it.
        for n in [n for n in chosen if any(_matches(a, pattern) for a in _self_and_parents(n))]:
            del chosen[n]
    # Keep model order (named_modules order), not target order.
    return {n: chosen[n] for n in candidates if n in chosen}


def _self_and_parents(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _name_hint(name: str, names: Sequence[str], kinds: str = "") -> str:
    """Near matches of ``name`` among ``names``, else the first 20 names."""
    near = difflib.get_close_matches(name, list(names), n=5, cutoff=0.3)
    return f"near matches: {near}" if near else f"the model's {kinds}layers are: {list(names)[:20]}"


def no_match_message(pattern: str, names: Sequence[str], types=(), role: str = "target") -> str:
    bare = pattern[3:] if pattern.startswith("re:") else pattern
    kinds = "/".join(t.__name__ for t in types) + " " if types else ""
    return (
        f"{role} {pattern!r} matches no {kinds}layer; {_name_hint(bare, names, kinds)}. Use an "
        "exact name from `slimkit inspect` or a 're:' regex."
    )


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name``; a wrong name lists near matches."""
    modules = dict(model.named_modules())
    if name not in modules:
        hint = _name_hint(name, [n for n in modules if n])
        raise TargetError(
            f"no layer named {name!r}; {hint}. Use an exact name from `slimkit inspect`."
        )
    return modules[name]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, child, new)
