"""How many components a low-rank factorisation keeps, chosen per layer.

A :class:`RankSpec` names exactly one rule:

- ``ratio``: keep ``ceil(ratio * full_rank)`` components (``0 < ratio <= 1``);
- ``energy``: keep the fewest singular values whose squares sum to ``energy`` of the total;
- ``budget``: keep the most components whose factors hold at most ``budget`` x the layer's
  parameters;
- ``rank``: a fixed rank (checked per layer against ``1..full_rank``);
- ``vbmf``: the rank estimated by empirical variational Bayesian matrix factorisation
  (Nakajima et al. 2013, the global analytic solution), as used by Kim et al. 2016 for Tucker.

Every chooser works on one matrix's singular values, so the same rules serve SVD of a Linear and
the mode unfoldings of a conv kernel for Tucker/CP.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from slimkit.config import SlimConfig, check_range, parse_enum
from slimkit.errors import ConfigError


class RankRule(enum.StrEnum):
    RATIO = "ratio"
    ENERGY = "energy"
    BUDGET = "budget"
    RANK = "rank"
    VBMF = "vbmf"


@dataclasses.dataclass(frozen=True)
class RankSpec(SlimConfig):
    """One rank rule and its value, e.g. ``RankSpec("energy", 0.9)`` or ``RankSpec("rank", 8)``."""

    rule: RankRule = RankRule.RATIO
    value: float = 0.5

    def validate(self) -> None:
        object.__setattr__(self, "rule", parse_enum(RankRule, self.rule, "rank rule"))
        if self.rule is RankRule.RANK:
            if isinstance(self.value, float) and self.value.is_integer():
                object.__setattr__(self, "value", int(self.value))
            if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value <= 0:
                raise ConfigError(
                    f"rank must be a positive integer (1..full rank of each layer), but got "
                    f"{self.value!r}; pass e.g. rank=8 or use ratio=0.5"
                )
        elif self.rule is RankRule.VBMF:
            # value is unused; keep 0 so to_dict stays stable.
            object.__setattr__(self, "value", 0.0)
        else:
            check_range(self.rule.value, self.value, 0.0, 1.0, low_open=True)

    @classmethod
    def parse(cls, data: Any) -> RankSpec:
        """Accept a RankSpec, ``{"rule": .., "value": ..}`` or a one-key ``{"ratio": 0.5}``."""
        if isinstance(data, RankSpec):
            return data
        if isinstance(data, bool):
            raise ConfigError(f"rank must be a RankSpec, a dict or an integer, but got {data!r}")
        if isinstance(data, int):
            return cls(RankRule.RANK, data)
        if isinstance(data, dict):
            if "rule" in data:
                return cls.from_dict(data)
            keys = [k for k in data if k in RankRule._value2member_map_]
            if len(keys) != 1 or len(data) != 1:
                raise ConfigError(
                    f"a rank must name exactly one rule of {[r.value for r in RankRule]}, but got "
                    f"{data!r}; e.g. {{'ratio': 0.5}} or {{'rule': 'energy', 'value': 0.9}}"
                )
            value = data[keys[0]]
            return cls(RankRule(keys[0]), 0.0 if keys[0] == "vbmf" else value)
        raise ConfigError(f"rank must be a RankSpec, a dict or an integer, but got {data!r}")


def check_fixed_rank(rank: int, full_rank: int, layer: str) -> None:
    """Rank <= 0 or above full rank is an error that states the bounds."""
    if not 1 <= rank <= full_rank:
        raise ConfigError(
            f"rank for layer {layer!r} must be in 1..{full_rank} (its full rank), but got {rank}; "
            f"lower the rank, use ratio=... to scale it per layer, or leave the layer out "
            f"(ignore=[{layer!r}])"
        )


def rank_from_singular_values(
    s: torch.Tensor,
    spec: RankSpec,
    *,
    layer: str,
    params_at: Callable[[int], int] | None = None,
    original_params: int | None = None,
    shape: tuple[int, int] | None = None,
) -> int:
    """Choose a rank for one matrix with singular values ``s`` (descending, length = full rank).

    ``params_at(r)`` (params of the factorised layer at rank r) and ``original_params`` are
    needed by the budget rule; ``shape`` (rows, cols) of the matrix by VBMF.
    """
    full = int(s.numel())
    if spec.rule is RankRule.RANK:
        check_fixed_rank(int(spec.value), full, layer)
        return int(spec.value)
    if spec.rule is RankRule.RATIO:
        return max(1, min(full, math.ceil(spec.value * full)))
    if spec.rule is RankRule.ENERGY:
        e = s.double().pow(2)
        frac = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
        # Fewest components whose energy reaches the threshold (1e-12 absorbs rounding at 1.0).
        return max(1, min(full, int((frac < spec.value - 1e-12).sum()) + 1))
    if spec.rule is RankRule.BUDGET:
        if params_at is None or original_params is None:
            raise ConfigError("the budget rule needs the layer's parameter counts")
        fits = [r for r in range(1, full + 1) if params_at(r) <= spec.value * original_params]
        return max(fits) if fits else 1
    if spec.rule is RankRule.VBMF:
        if shape is None:
            raise ConfigError("the vbmf rule needs the matrix shape")
        return max(1, min(full, evbmf_rank(s.double().cpu().numpy(), *shape)))
    raise ConfigError(f"unknown rank rule {spec.rule!r}")  # pragma: no cover


def evbmf_rank(s: np.ndarray, rows: int, cols: int) -> int:
    """Rank kept by EVBMF's global analytic solution (Nakajima et al., JMLR 2013).

    ``s`` holds all min(rows, cols) singular values. The noise variance sigma^2 is the minimiser
    of the free energy over its analytic bounds (log-spaced grid search); a component survives
    when its singular value exceeds sqrt(M sigma^2 (1 + tau) (1 + alpha / tau)).
    """
    L, M = (rows, cols) if rows <= cols else (cols, rows)  # L <= M
    s = np.asarray(s, dtype=np.float64)[:L]
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    h_ub = int(min(math.ceil(L / (1 + alpha)) - 1, len(s))) - 1  # index bound on the rank
    if h_ub + 1 >= len(s) or h_ub < 0:
        return len(s)
    upper = float((s**2).sum()) / (L * M)
    lower = max(s[h_ub + 1] ** 2 / (M * xubar), float(np.mean(s[h_ub + 1 :] ** 2)) / M, 1e-300)
    if not upper > lower:
        return 1

    def free_energy(sigma2: float) -> float:
        x = s**2 / (M * sigma2)
        z1 = x[x > xubar]
        z2 = x[x <= xubar]
        tau_z1 = 0.5 * (z1 - (1 + alpha) + np.sqrt((z1 - (1 + alpha)) ** 2 - 4 * alpha))
        return float(
            np.sum(z2 - np.log(z2))
            + np.sum(z1 - tau_z1)
            + np.sum(np.log((tau_z1 + 1) / z1))
            + alpha * np.sum(np.log(tau_z1 / alpha + 1))
        )

    grid = np.exp(np.linspace(math.log(lower), math.log(upper), 400))
    sigma2 = float(grid[int(np.argmin([free_energy(g) for g in grid]))])
    return int((s > math.sqrt(M * sigma2 * xubar)).sum())
