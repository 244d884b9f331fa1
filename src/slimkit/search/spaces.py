"""Search spaces: named categorical choices, described in Python or YAML.

A space is ``{name: [option, ...]}``; options are JSON scalars. ``suggest(trial)`` asks an Optuna
trial for every choice (``suggest_categorical``), so any Optuna sampler (TPE, NSGA-II, random,
slimkit's evolution and REINFORCE samplers) can search it and every trial's parameters are
stored in the study by name.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from slimkit.errors import ConfigError

Scalar = bool | int | float | str


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file (``safe_load``); a missing, unreadable or malformed file is a
    ConfigError naming the file and the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{what} file {str(p)!r} does not exist; check the path given to --space"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{what} file {str(p)!r} is a folder; give the YAML file inside it"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {str(p)!r} is not UTF-8 text; give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{what} file {str(p)!r} is not valid YAML{at}: {problem}; fix the syntax "
            "(e.g. close every [ and {)"
        ) from None


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Categorical choices by name, e.g. ``SearchSpace({"depth": (1, 2, 3), "block": ("plain", "dwsep")})``."""

    choices: Mapping[str, tuple[Scalar, ...]]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ConfigError("a search space needs at least one choice, but got none")
        fixed: dict[str, tuple[Scalar, ...]] = {}
        for name, options in self.choices.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"choice names must be non-empty strings, but got {name!r}")
            if isinstance(options, (str, bytes)) or not isinstance(options, (list, tuple)):
                raise ConfigError(f"choice {name!r} must be a list of options, but got {options!r}")
            if len(options) == 0:
                raise ConfigError(f"choice {name!r} has no options; give at least one")
            for o in options:
                if not isinstance(o, (bool, int, float, str)):
                    raise ConfigError(
                        f"option {o!r} of choice {name!r} is not a number, bool or string"
                    )
            if len(set(options)) != len(options):
                raise ConfigError(f"choice {name!r} repeats an option: {list(options)}")
            fixed[name] = tuple(options)
        object.__setattr__(self, "choices", fixed)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        data = read_yaml(path, "search space")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a search space file must map choice names to option lists")
        return cls(data.get("choices", data))

    def size(self) -> int:
        return math.prod(len(o) for o in self.choices.values())

    def suggest(self, trial: Any) -> dict[str, Scalar]:
        return {n: trial.suggest_categorical(n, list(o)) for n, o in self.choices.items()}

    def all_points(self) -> Iterator[dict[str, Scalar]]:
        names = list(self.choices)
        for combo in itertools.product(*(self.choices[n] for n in names)):
            yield dict(zip(names, combo, strict=True))

    def contains(self, params: Mapping[str, Any]) -> bool:
        return set(params) == set(self.choices) and all(
            params[n] in self.choices[n] for n in self.choices
        )


# The default NAS space over slimkit's SearchNet (depth, width, kernel, block type):
# 3 * 3 * 2 * 3 = 54 architectures, small enough to measure all of them.
DEFAULT_NAS_SPACE = SearchSpace(
    {
        "depth": (1, 2, 3),
        "width": (8, 16, 32),
        "kernel": (3, 5),
        "block": ("plain", "dwsep", "residual"),
    }
)
