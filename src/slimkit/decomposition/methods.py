"""YAML/CLI method names -> config types of the decomposition family.

``METHODS["svd"].from_dict({"ratio": 0.5})`` builds the config a recipe stage or
``slimkit decompose --method svd --set ratio=0.5`` asks for. Other modules of this family (e.g.
fusion) add their own entry here.
"""

from __future__ import annotations

from typing import Any

from slimkit.config import SlimConfig
from slimkit.decomposition.cp import CPDecomposition
from slimkit.decomposition.depthwise import DepthwiseSeparable
from slimkit.decomposition.fusion import FuseBatchNorm
from slimkit.decomposition.svd import SVDDecomposition
from slimkit.decomposition.tucker import TuckerDecomposition
from slimkit.errors import ConfigError

METHODS: dict[str, type[SlimConfig]] = {
    "svd": SVDDecomposition,
    "tucker": TuckerDecomposition,
    "cp": CPDecomposition,
    "depthwise": DepthwiseSeparable,
    "fuse_bn": FuseBatchNorm,
}


def make_config(method: str, options: dict[str, Any] | None = None) -> SlimConfig:
    """Build the config of ``method`` from a dict of options; a typo lists the valid names."""
    if method not in METHODS:
        raise ConfigError(
            f"decomposition method must be one of {sorted(METHODS)}, but got {method!r}"
        )
    return METHODS[method].from_dict(dict(options or {}))
