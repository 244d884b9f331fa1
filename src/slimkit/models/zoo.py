"""slimkit's small model zoo, sized for 28x28 (MNIST) and 8x8 (sklearn digits) inputs.

Every builder takes ``num_classes``, ``in_channels`` and ``image_size``; ``build_model`` stamps
the result with ``slimkit_arch = {"zoo": name, "kwargs": {...}}`` so artifacts can rebuild it
without pickling (see :mod:`slimkit.models.spec`).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError


class LeNet300100(nn.Module):
    """LeNet-300-100 (Deep Compression): 784-300-100-10 fully connected, ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = self.flatten(x)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe / Deep Compression: conv20-pool-conv50-pool-fc500-fc10 (431k params).

    For small inputs (8x8 digits) the convs pad by 2 so the spatial size survives.
    ``channels`` (conv1, conv2) and ``hidden`` (fc1 width) shrink it, e.g. for a distillation
    student: ``channels=(8, 16), hidden=64`` has 20.5k parameters, same layer names.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (20, 50),
        hidden: int = 500,
    ) -> None:
        super().__init__()
        if len(channels) != 2 or any(int(c) < 1 for c in channels) or int(hidden) < 1:
            raise ConfigError(
                f"LeNet-5 needs channels=(conv1, conv2) >= 1 and hidden >= 1, but got "
                f"channels={tuple(channels)}, hidden={hidden}; e.g. channels=(8, 16), hidden=64"
            )
        c1, c2 = int(channels[0]), int(channels[1])
        pad = 0 if image_size >= 28 else 2
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=pad)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=pad)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        side = image_size
        for _ in range(2):
            side = (side + 2 * pad - 4) // 2
        self.fc1 = nn.Linear(c2 * side * side, int(hidden))
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(int(hidden), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))  # (B, c1=20, 12, 12) for 28x28
        x = self.pool2(self.conv2(x))  # (B, c2=50, 4, 4)
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv-BN when shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # residual add couples channels


class ResNet(nn.Module):
    """CIFAR-style ResNet (He 2016) with ``blocks`` basic blocks per stage, widths w, 2w, 4w."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 16,
        blocks: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            cout = width * mult
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0 and image_size >= 16) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand - 3x3 depthwise - 1x1 linear project (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Tiny(nn.Module):
    """A MobileNetV2 (Sandler 2018) cut down for 28x28 / 8x8 inputs: depthwise + inverted residuals."""

    # (expand t, channels c, repeats n, stride s) as in the paper's table 2, scaled down.
    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 48, 1, 1))

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        stem: int = 16,
        last: int = 128,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()
        )
        blocks: list[nn.Module] = []
        cin = stem
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                stride = s if (i == 0 and image_size >= 16) else 1
                blocks.append(InvertedResidual(cin, c, stride, t))
                cin = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))


class SearchCell(nn.Module):
    """One NAS cell: ``plain`` conv-BN-ReLU, ``dwsep`` depthwise k x k + pointwise, or
    ``residual`` (two convs with an identity / 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, kernel: int, block: str) -> None:
        super().__init__()
        pad = kernel // 2
        self.block = block
        if block == "plain":
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, kernel, 1, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )
        elif block == "dwsep":
            self.body = nn.Sequential(
                nn.Conv2d(cin, cin, kernel, 1, pad, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )
        elif block == "residual":
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, kernel, 1, pad, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, kernel, 1, pad, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.shortcut: nn.Module = (
                nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)
            )
            self.relu = nn.ReLU()
        else:
            raise ConfigError(
                f"block must be one of ['plain', 'dwsep', 'residual'], but got {block!r}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block == "residual":
            return self.relu(self.body(x) + self.shortcut(x))
        return self.body(x)


class SearchNet(nn.Module):
    """The NAS space's network: a stem, ``depth`` cells of ``width`` channels (doubling after
    the first cell, with 2x2 max-pooling between cells), global pooling and a classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        depth: int = 2,
        width: int = 16,
        kernel: int = 3,
        block: str = "plain",
    ) -> None:
        super().__init__()
        if not 1 <= depth <= 6:
            raise ConfigError(f"depth must be in 1..6, but got {depth}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        cells: list[nn.Module] = []
        cin, side = width, image_size
        for i in range(depth):
            cout = width if i == 0 else width * 2
            cells.append(SearchCell(cin, cout, kernel, block))
            if side >= 4 and i < depth - 1:
                cells.append(nn.MaxPool2d(2))
                side //= 2
            cin = cout
        self.cells = nn.Sequential(*cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.cells(self.stem(x)))))


ZOO: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300100,
    "lenet5": LeNet5,
    "resnet": ResNet,
    "mobilenetv2": MobileNetV2Tiny,
    "searchnet": SearchNet,
}


def zoo_names() -> list[str]:
    return sorted(ZOO)


# Whole-number options every builder takes, and the values that make a usable model.
SIZE_RULES = {"num_classes": (1, 100_000), "in_channels": (1, 64), "image_size": (4, 1024)}

# Each builder's own whole-number options and their ranges (the upper bounds keep one model
# within a CPU's memory; the NAS space (slimkit.search.nas) reads SearchNet's from here).
# LeNet-5's ``channels`` (a pair) and SearchNet's ``block`` (a name) are checked on their own.
OPTION_RULES: dict[str, dict[str, tuple[int, int]]] = {
    "lenet300": {},
    "lenet5": {"hidden": (1, 100_000)},
    "resnet": {"width": (1, 1024), "blocks": (1, 16)},
    "mobilenetv2": {"stem": (1, 1024), "last": (1, 8192)},
    "searchnet": {"depth": (1, 6), "width": (1, 4096), "kernel": (1, 31)},
}
SEARCHNET_BLOCKS = ("plain", "dwsep", "residual")
OPTION_HINTS = {
    "lenet5": "LeNet-5 needs channels=(conv1, conv2) >= 1 and hidden >= 1; e.g. channels=(8, 16), "
    "hidden=64",
    "resnet": "ResNet's width is the first stage's channels (default 16) and blocks the basic "
    "blocks per stage (default 1)",
    "mobilenetv2": "MobileNetV2Tiny's stem and last are the first and last conv widths "
    "(default 16 and 128)",
    "searchnet": "SearchNet takes depth 1..6 cells of width channels (default 16) with kernel x "
    "kernel convs (default 3)",
}


def zoo_options(name: str) -> list[str]:
    """The keyword options zoo model ``name``'s builder takes."""
    params = inspect.signature(ZOO[name]).parameters
    return [p for p in params if p != "self"]


def _whole(value: Any) -> int | None:
    """``value`` as a plain int when it is a whole number (a Python or NumPy integer, not a
    bool); None for anything else (a float such as 64.9 was truncated by the layers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)  # np.int64(16) -> 16, so the model's kwargs stay JSON values


def _check_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every size option checked and made a plain int (ConfigError naming the
    option, its range and the value otherwise). Unknown keys are left to the builder."""
    out = dict(kwargs)
    own = OPTION_RULES.get(name, {})  # a builder added to ZOO at run time has no rules here
    rules = {**SIZE_RULES, **own}
    for key, (low, high) in rules.items():
        if key not in out or (key in SIZE_RULES and out[key] is None):
            continue
        value = _whole(out[key])
        if value is None or not low <= value <= high:
            hint = OPTION_HINTS.get(name) if key in own else None
            raise ConfigError(
                f"zoo model {name!r}: {key} must be an integer in {low}..{high}, but got "
                f"{out[key]!r}; " + (hint or "pass a whole number in that range")
            )
        out[key] = value
    if name == "lenet5" and "channels" in out:
        channels = out["channels"]
        pair = list(channels) if isinstance(channels, (list, tuple)) else None
        ints = [_whole(c) for c in pair] if pair is not None else []
        if pair is None or len(pair) != 2 or any(c is None or not 1 <= c <= 4096 for c in ints):
            raise ConfigError(
                f"zoo model 'lenet5': channels must be two integers in 1..4096, but got "
                f"channels={channels!r}; {OPTION_HINTS['lenet5']}"
            )
        out["channels"] = tuple(ints) if isinstance(channels, tuple) else ints
    if name == "searchnet":
        block = out.get("block", "plain")
        if block not in SEARCHNET_BLOCKS:
            raise ConfigError(
                f"zoo model 'searchnet': block must be one of {list(SEARCHNET_BLOCKS)}, but got "
                f"{block!r}"
            )
        kernel = out.get("kernel", 3)
        if block == "residual" and kernel % 2 == 0:
            raise ConfigError(
                f"zoo model 'searchnet': the 'residual' block needs an odd kernel (it pads "
                f"kernel//2, so an even one changes the image size and the shortcut no longer "
                f"fits), but got kernel={kernel}; use kernel=3 or 5, or another block"
            )
    return out


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    value = _whole(seed)
    if value is None or not 0 <= value <= 2**63 - 1:
        raise ConfigError(
            f"build_model's seed must be a whole number in 0..{2**63 - 1} (or None for torch's "
            f"global random state), but got {seed!r}"
        )
    return value


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, e.g. ``build_model("lenet5", image_size=8, seed=0)``.

    With ``seed`` the initial weights depend only on it (the global RNG is left untouched).
    Size options must be whole numbers (NumPy integers are turned into ints); each builder's
    are listed by :func:`zoo_options`.
    """
    if not isinstance(name, str) or name not in ZOO:
        raise ConfigError(f"unknown zoo model {name!r}; valid names are {zoo_names()}")
    seed = _check_seed(seed)
    kwargs = _check_options(name, kwargs)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = ZOO[name](**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ConfigError(
            f"zoo model {name!r} rejected its options {kwargs} ({type(exc).__name__}: {first}); "
            f"its options are {zoo_options(name)}"
        ) from None
    model.slimkit_arch = {"zoo": name, "kwargs": dict(kwargs)}  # type: ignore[assignment]
    return model
