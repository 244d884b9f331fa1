"""A small English corpus for sentence-embedding fidelity (shipped as ``corpus_en.txt``)."""

from __future__ import annotations

import numbers
from importlib import resources

from slimkit.errors import ConfigError


def check_limit(limit: object) -> int | None:
    """``limit`` is None (all lines) or a whole number >= 1: ``if limit`` read 0 as "all", and
    a negative limit sliced off the last lines."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise ConfigError(
            f"limit must be an integer >= 1 (the number of lines), or None for all, but got "
            f"{limit!r}"
        )
    return int(limit)


def load_corpus(limit: int | None = None) -> list[str]:
    """Return the packaged English sentences (one per line, blank lines and '#' comments skipped)."""
    limit = check_limit(limit)
    text = resources.files("slimkit.data").joinpath("corpus_en.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines()]
    sentences = [ln for ln in lines if ln and not ln.startswith("#")]
    return sentences if limit is None else sentences[:limit]
