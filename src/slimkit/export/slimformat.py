"""The .slim artifact (filled in by the pipeline issue): format magic used by slimkit.io.load."""

from __future__ import annotations

MAGIC = b"SLIMKIT\x00"


def load(path, *, allow_nonfinite: bool = False):  # pragma: no cover - replaced by issue 5
    raise NotImplementedError(".slim artifacts are not implemented yet")
