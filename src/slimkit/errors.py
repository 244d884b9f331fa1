"""slimkit's own error types. Every message states the rule, the value received and the fix."""

from __future__ import annotations


class SlimkitError(Exception):
    """Base class of every error slimkit raises on purpose (CLI exit code 2)."""


class ConfigError(SlimkitError, ValueError):
    """A config, recipe or argument breaks a stated rule."""


class TargetError(ConfigError):
    """A layer pattern matched nothing, or a layer name does not exist."""


class UnsafeFileError(SlimkitError):
    """A file would need code execution (pickle) or escapes its folder; it is refused."""


class NumericsError(SlimkitError):
    """A tensor holds NaN/inf, or a result is not finite."""


class ParityError(SlimkitError):
    """An exported model disagrees with PyTorch past the stated tolerance."""


class MissingExtraError(SlimkitError, ImportError):
    """An optional dependency is not installed."""


class AccuracyGateError(SlimkitError):
    """A pipeline result missed max_accuracy_drop (the artifact is still saved)."""


def require(condition: bool, message: str, error: type[SlimkitError] = ConfigError) -> None:
    """Raise `error(message)` unless `condition` holds."""
    if not condition:
        raise error(message)


def import_extra(module: str, extra: str):
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{module!r} is needed for this feature but is not installed; "
            f"install it with: pip install 'slimkit[{extra}]'"
        ) from exc
