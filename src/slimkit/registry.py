"""One explicit registry per technique family: config type -> handler.

Looked up by the config's exact type (then its bases); a missing entry fails loudly and lists
what is registered. Nothing is discovered by name or by import side effects that can be swallowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slimkit.errors import ConfigError


class Registry:
    def __init__(self, family: str) -> None:
        self.family = family
        self._handlers: dict[type, Callable[..., Any]] = {}

    def register(self, config_type: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if config_type in self._handlers:
                raise RuntimeError(f"{config_type.__name__} is registered twice in {self.family}")
            self._handlers[config_type] = fn
            return fn

        return deco

    def lookup(self, config: object) -> Callable[..., Any]:
        for cls in type(config).__mro__:
            if cls in self._handlers:
                return self._handlers[cls]
        valid = sorted(c.__name__ for c in self._handlers)
        raise ConfigError(
            f"{type(config).__name__} is not a {self.family} config; valid configs: {valid}"
        )

    def names(self) -> list[str]:
        return sorted(c.__name__ for c in self._handlers)
