"""Mixed-precision weight quantization: per-layer bit widths from a measured sensitivity scan.

1. Scan: for every chosen layer and every candidate bit width, quantize *that layer alone* and
   measure the damage: output SQNR on calibration inputs (default), accuracy on the calibration
   set, or (data-free) the layer's weight SQNR.
2. Allocate: start every layer at the widest candidate and repeatedly narrow the layer whose next
   step down costs the least extra loss per weight bit saved, until the total weight bits meet
   the budget (average bits per weight, or total bytes of packed codes). The loss of an SQNR
   measurement is its relative noise power ``10**(-SQNR/10)`` (noises of different layers add);
   for accuracy it is the accuracy drop.
3. Apply the chosen widths with the base scheme (linear, log2 or kmeans).

The plan (layer name -> bits, with the scan) is a :class:`MixedPlan`: printed as a rich table,
saved as JSON keyed by layer name, and kept on the model as ``model.slimkit_mixed_plan``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from typing import Any

import torch
from torch import nn

from slimkit import atomic
from slimkit.config import SlimConfig, check_int, check_range, parse_enum, select_modules
from slimkit.errors import ConfigError
from slimkit.metrics.fidelity import sqnr_db
from slimkit.quantization.api import QUANTIZERS
from slimkit.quantization.codes import QuantCodes, dequantize
from slimkit.quantization.common import attach, check_finite, weight_of
from slimkit.quantization.kmeans import quantize_kmeans_tensor
from slimkit.quantization.linear import quantize_linear_tensor
from slimkit.quantization.log2 import quantize_log2_tensor


class MixedScheme(str, enum.Enum):
    LINEAR = "linear"
    LOG2 = "log2"
    KMEANS = "kmeans"


class SensitivityMetric(str, enum.Enum):
    OUTPUT_SQNR = "output_sqnr"  # model output SQNR on calibration inputs (needs inputs)
    ACCURACY = "accuracy"  # top-1 accuracy on the calibration set (needs data)
    WEIGHT_SQNR = "weight_sqnr"  # the layer's own weight SQNR (data-free)


_MIN_BITS = {MixedScheme.LINEAR: 1, MixedScheme.LOG2: 2, MixedScheme.KMEANS: 1}


@dataclasses.dataclass(frozen=True)
class MixedPrecision(SlimConfig):
    """``sk.quantize_(model, MixedPrecision(budget_bits_per_weight=4), data=bundle)``.

    Give at most one budget: ``budget_bits_per_weight`` (average over the chosen layers) or
    ``budget_bytes`` (total bytes of the chosen layers' packed codes). With neither, the budget
    is 4 bits per weight; with both, the config is refused (one of them would be ignored).
    """

    # None with no budget_bytes means 4.0; kept None (not filled in) so dataclasses.replace(
    # cfg, budget_bytes=...) on a default config is still one budget
    budget_bits_per_weight: float | None = None
    budget_bytes: int | None = None
    candidates: tuple[int, ...] = (2, 3, 4, 6, 8)
    scheme: MixedScheme = MixedScheme.LINEAR
    metric: SensitivityMetric = SensitivityMetric.OUTPUT_SQNR
    per_channel: bool = True  # linear/log2 scales per output channel
    symmetric: bool = True  # linear only
    calib_batches: int = 4
    plan_path: str | None = None  # also write the plan JSON here
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def validate(self) -> None:
        object.__setattr__(self, "scheme", parse_enum(MixedScheme, self.scheme, "scheme"))
        object.__setattr__(self, "metric", parse_enum(SensitivityMetric, self.metric, "metric"))
        if self.budget_bytes is not None and self.budget_bits_per_weight is not None:
            raise ConfigError(
                "MixedPrecision takes one budget, but got budget_bits_per_weight="
                f"{self.budget_bits_per_weight!r} and budget_bytes={self.budget_bytes!r}; "
                "keep the one you mean and drop the other"
            )
        if self.budget_bits_per_weight is not None:
            check_range("budget_bits_per_weight", self.budget_bits_per_weight, 1.0, 16.0)
        if self.budget_bytes is not None:
            check_int("budget_bytes", self.budget_bytes, 1, 10**15)
        if not self.candidates:
            raise ConfigError("candidates must list at least one bit width, but got ()")
        low = _MIN_BITS[self.scheme]
        if self.scheme is MixedScheme.LINEAR and self.symmetric:
            low = 2
        for b in self.candidates:
            check_int(f"every candidate bit width for {self.scheme.value}", b, low, 8)
        object.__setattr__(self, "candidates", tuple(sorted(set(self.candidates))))
        check_int("calib_batches", self.calib_batches, 1, 10**6)


def quantize_tensor(w: torch.Tensor, bits: int, config: MixedPrecision) -> QuantCodes:
    """Quantize one float32 weight with the config's base scheme at ``bits``."""
    if config.scheme is MixedScheme.LINEAR:
        return quantize_linear_tensor(w, bits, config.symmetric, config.per_channel)
    if config.scheme is MixedScheme.LOG2:
        return quantize_log2_tensor(w, bits, config.per_channel)
    return quantize_kmeans_tensor(w, bits)


@dataclasses.dataclass
class MixedPlan:
    """Per-layer bit widths chosen under a budget, with the sensitivity scan behind them."""

    bits: dict[str, int]
    numel: dict[str, int]
    sensitivity: dict[str, dict[int, float]]  # layer -> bits -> metric (dB or accuracy)
    metric: str
    scheme: str
    budget_bits: int  # total weight bits allowed
    reference: float | None = None  # accuracy of the unquantized model (accuracy metric)

    @property
    def total_bits(self) -> int:
        return sum(self.numel[n] * b for n, b in self.bits.items())

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / max(1, sum(self.numel.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": dict(self.bits),
            "numel": dict(self.numel),
            "sensitivity": {
                n: {str(b): v for b, v in s.items()} for n, s in self.sensitivity.items()
            },
            "metric": self.metric,
            "scheme": self.scheme,
            "budget_bits": self.budget_bits,
            "total_bits": self.total_bits,
            "bits_per_weight": self.bits_per_weight,
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixedPlan:
        sens = {n: {int(b): float(v) for b, v in s.items()} for n, s in data["sensitivity"].items()}
        return cls(
            {n: int(b) for n, b in data["bits"].items()},
            {n: int(v) for n, v in data["numel"].items()},
            sens,
            data["metric"],
            data["scheme"],
            int(data["budget_bits"]),
            data.get("reference"),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON (atomically), keyed by layer name."""
        atomic.write_json(path, self.to_dict())

    def table(self):
        """The plan as a rich Table: layer, weights, chosen bits, metric at each candidate."""
        from rich.table import Table

        cands = sorted({b for s in self.sensitivity.values() for b in s})
        unit = "acc" if self.metric == "accuracy" else "dB"
        t = Table(
            title=f"mixed precision ({self.scheme}, {self.metric}): "
            f"{self.bits_per_weight:.2f} bits/weight, {self.total_bits:,} of "
            f"{self.budget_bits:,} bits"
        )
        for col in ["layer", "weights", "bits", *[f"{b}b {unit}" for b in cands]]:
            t.add_column(col, justify="left" if col == "layer" else "right")
        for n, b in self.bits.items():
            vals = [self.sensitivity[n].get(c, math.nan) for c in cands]
            t.add_row(n, f"{self.numel[n]:,}", str(b), *[f"{v:.4g}" for v in vals])
        return t

    def print(self) -> None:
        from rich.console import Console

        Console().print(self.table())


def _calib_inputs(data: Any, example_inputs: torch.Tensor | None, batches: int):
    if example_inputs is not None:
        return [example_inputs]
    if data is None:
        return None
    out = []
    for i, (x, _) in enumerate(data.calib):
        if i >= batches:
            break
        out.append(x)
    return out


@torch.no_grad()
def _accuracy(model: nn.Module, data: Any, batches: int) -> float:
    right = total = 0
    for i, (x, y) in enumerate(data.calib):
        if i >= batches:
            break
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    if total == 0:
        raise ConfigError("accuracy sensitivity needs a non-empty calibration set, but got 0")
    return right / total


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    config: MixedPrecision,
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
) -> tuple[dict[str, dict[int, float]], float | None]:
    """``{layer: {bits: metric}}`` measured by quantizing one layer at a time (model unchanged)."""
    layers = select_modules(model, config.targets, config.ignore)
    for n, m in layers.items():
        check_finite(n, weight_of(m))
    metric = config.metric
    model.eval()
    inputs = _calib_inputs(data, example_inputs, config.calib_batches)
    if metric is SensitivityMetric.OUTPUT_SQNR and inputs is None:
        raise ConfigError(
            "metric 'output_sqnr' needs calibration inputs: pass data=<DataBundle> or "
            "example_inputs=<tensor> to quantize_, or use metric='weight_sqnr' (data-free)"
        )
    if metric is SensitivityMetric.ACCURACY and data is None:
        raise ConfigError(
            "metric 'accuracy' needs data=<DataBundle> (its calib split), but got None"
        )
    refs = [model(x) for x in inputs] if metric is SensitivityMetric.OUTPUT_SQNR and inputs else []
    reference = (
        _accuracy(model, data, config.calib_batches)
        if metric is SensitivityMetric.ACCURACY
        else None
    )
    scan: dict[str, dict[int, float]] = {}
    for n, m in layers.items():
        original = weight_of(m).detach().clone()
        scan[n] = {}
        for bits in config.candidates:
            q = dequantize(quantize_tensor(original.float(), bits, config)).to(original.dtype)
            if metric is SensitivityMetric.WEIGHT_SQNR:
                scan[n][bits] = sqnr_db(original, q)
                continue
            weight_of(m).copy_(q)
            try:
                if metric is SensitivityMetric.OUTPUT_SQNR:
                    out = torch.cat([model(x).flatten() for x in inputs or []])
                    scan[n][bits] = sqnr_db(torch.cat([r.flatten() for r in refs]), out)
                else:
                    scan[n][bits] = _accuracy(model, data, config.calib_batches)
            finally:
                weight_of(m).copy_(original)
    return scan, reference


def _loss(value: float, metric: SensitivityMetric, reference: float | None) -> float:
    if metric is SensitivityMetric.ACCURACY:
        return max(0.0, (reference or 0.0) - value)
    return 0.0 if value == math.inf else 10.0 ** (-value / 10.0)


def allocate_bits(
    scan: dict[str, dict[int, float]],
    numel: dict[str, int],
    budget_bits: int,
    metric: SensitivityMetric,
    reference: float | None = None,
) -> dict[str, int]:
    """Greedy: narrow the cheapest layer (extra loss per bit saved) until within budget, then
    widen the layers that gain most per bit while the budget still allows it."""
    cands = {n: sorted(s) for n, s in scan.items()}
    choice = {n: c[-1] for n, c in cands.items()}
    total = sum(numel[n] * b for n, b in choice.items())
    while total > budget_bits:
        best: tuple[float, int, str] | None = None
        for n, b in choice.items():
            i = cands[n].index(b)
            if i == 0:
                continue
            lower = cands[n][i - 1]
            extra = _loss(scan[n][lower], metric, reference) - _loss(scan[n][b], metric, reference)
            saved = numel[n] * (b - lower)
            key = (max(extra, 0.0) / saved, -saved, n)
            if best is None or key < best:
                best = key
        if best is None:
            floor = sum(numel[n] * c[0] for n, c in cands.items())
            raise ConfigError(
                f"the budget of {budget_bits:,} weight bits is below what the narrowest "
                f"candidates need ({floor:,} bits, {floor / max(1, sum(numel.values())):.3g} "
                "bits/weight); raise the budget or add narrower candidates"
            )
        n = best[2]
        lower = cands[n][cands[n].index(choice[n]) - 1]
        total -= numel[n] * (choice[n] - lower)
        choice[n] = lower
    # Fill: a big layer's last step down can overshoot the budget; spend what is left on the
    # widenings that buy the most loss reduction per bit and still fit.
    while True:
        pick: tuple[float, str, int] | None = None
        for n, b in choice.items():
            i = cands[n].index(b)
            if i + 1 == len(cands[n]):
                continue
            higher = cands[n][i + 1]
            cost = numel[n] * (higher - b)
            gain = _loss(scan[n][b], metric, reference) - _loss(scan[n][higher], metric, reference)
            if total + cost <= budget_bits and gain > 0 and (pick is None or gain / cost > pick[0]):
                pick = (gain / cost, n, higher)
        if pick is None:
            return choice
        _, n, higher = pick
        total += numel[n] * (higher - choice[n])
        choice[n] = higher


def plan_mixed_precision(
    model: nn.Module,
    config: MixedPrecision,
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
) -> MixedPlan:
    """Scan sensitivity and choose per-layer bits under the budget (model left unchanged)."""
    layers = select_modules(model, config.targets, config.ignore)
    numel = {n: weight_of(m).numel() for n, m in layers.items()}
    if config.budget_bytes is not None:
        budget = int(config.budget_bytes) * 8
    else:
        per_weight = config.budget_bits_per_weight
        per_weight = 4.0 if per_weight is None else per_weight
        budget = int(math.floor(per_weight * sum(numel.values())))
    scan, reference = sensitivity_scan(model, config, data, example_inputs)
    bits = allocate_bits(scan, numel, budget, config.metric, reference)
    return MixedPlan(bits, numel, scan, config.metric.value, config.scheme.value, budget, reference)


def apply_mixed_plan(model: nn.Module, plan: MixedPlan, config: MixedPrecision) -> nn.Module:
    """Quantize every layer of ``plan`` at its bits with the config's base scheme."""
    modules = dict(model.named_modules())
    for n, bits in plan.bits.items():
        if n not in modules:
            raise ConfigError(
                f"plan layer {n!r} is not in the model; the plan is for another model"
            )
        m = modules[n]
        check_finite(n, weight_of(m))
        attach(m, quantize_tensor(weight_of(m).detach().cpu().float(), bits, config))
    model.slimkit_mixed_plan = dict(plan.bits)  # type: ignore[assignment]
    return model


@QUANTIZERS.register(MixedPrecision)
def _apply_mixed(
    model: nn.Module,
    config: MixedPrecision,
    data: Any = None,
    example_inputs: torch.Tensor | None = None,
    show: bool | None = None,
) -> nn.Module:
    from slimkit import progress

    plan = plan_mixed_precision(model, config, data, example_inputs)
    if show or (show is None and progress.enabled()):
        plan.print()
    if config.plan_path:
        plan.save(config.plan_path)
    return apply_mixed_plan(model, plan, config)
