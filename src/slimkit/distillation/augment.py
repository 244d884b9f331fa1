"""Random affine input augmentation for training batches (shifts, rotations, scaling).

Distillation's gain shows when the student is short of data rather than of capacity: on a
jittered image the hard label says little new, while the teacher's soft targets still carry its
"dark knowledge" (Hinton 2015 trained the MNIST student on jittered digits). ``augment_bundle``
wraps a :class:`~slimkit.data.datasets.DataBundle` so every training batch is warped by a
seeded :class:`RandomAffine`; the same seed gives the same warps, so a student trained alone
and one trained with KD can see identical inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from slimkit.config import SlimConfig, check_range
from slimkit.data.datasets import DataBundle
from slimkit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RandomAffine(SlimConfig):
    """Per-sample random shift (pixels), rotation (degrees) and scale (fraction) of (B, C, H, W).

    Out-of-image pixels repeat the border (the background, for digits). All zeros = identity.
    """

    kind = "random_affine"
    max_shift: float = 2.0  # pixels, uniform in [-max_shift, max_shift] per axis
    max_rotate: float = 10.0  # degrees, uniform in [-max_rotate, max_rotate]
    max_scale: float = 0.0  # zoom factor uniform in [1 - max_scale, 1 + max_scale]

    def validate(self) -> None:
        check_range("max_shift", self.max_shift, 0.0, 64.0)
        check_range("max_rotate", self.max_rotate, 0.0, 180.0)
        check_range("max_scale", self.max_scale, 0.0, 0.9)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(
                f"RandomAffine warps image batches (B, C, H, W), but got shape {tuple(x.shape)}; "
                "leave augment unset for non-image inputs"
            )
        b, _, h, w = x.shape

        def uniform(limit: float) -> torch.Tensor:  # (B,) in [-limit, limit]
            return (torch.rand(b, generator=generator) * 2 - 1) * limit

        angle = uniform(math.radians(self.max_rotate))
        scale = 1.0 + uniform(self.max_scale)
        # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 s / size.
        tx = uniform(self.max_shift) * 2 / w
        ty = uniform(self.max_shift) * 2 / h
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
        )  # (B, 2, 3): output pixel -> input sampling position
        grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
        out = F.grid_sample(
            x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.to(x.dtype)


class AugmentedLoader:
    """Iterate a loader and warp each input batch; labels pass through unchanged.

    ``generator`` and ``len`` are the wrapped loader's, so :func:`slimkit.training.train` re-seeds
    the shuffle order as usual; the warps come from a private generator seeded by ``seed`` when
    the loader is made, so two runs built with the same seed see the same inputs.
    """

    def __init__(self, loader: Any, augment: RandomAffine, seed: int = 0) -> None:
        self.loader = loader
        self.augment = augment
        self._rng = torch.Generator().manual_seed(seed)

    @property
    def generator(self) -> Any:
        return getattr(self.loader, "generator", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield self.augment(x, self._rng), y


def augment_bundle(data: DataBundle, augment: RandomAffine | None, seed: int = 0) -> DataBundle:
    """``data`` with its training loader warped by ``augment`` (test/calib untouched)."""
    if augment is None:
        return data
    if not isinstance(augment, RandomAffine):
        raise ConfigError(f"augment must be a RandomAffine, but got {type(augment).__name__}")
    return dataclasses.replace(data, train=AugmentedLoader(data.train, augment, seed))  # type: ignore[arg-type]


__all__ = ["AugmentedLoader", "RandomAffine", "augment_bundle"]
